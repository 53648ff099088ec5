"""Pages to send: small noise PNGs (decode cost out of the way) and rendered A4 text pages.

Noise does not compress, so a noise PNG's encoded size is set by its side: 64 px is
about 12 KB, 128 px about 49 KB (the "50 KB upload" of the intake and memory runs).
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
WORDS = (  # noqa: SIM905 (one readable paragraph of words)
    "the service batches pages for the engine and answers each client with its own result while the queue "
    "stays bounded invoice total amount date customer order shipping address quarterly report revenue "
    "growth margin section table figure appendix summary results method analysis patient record contract "
    "clause party agreement term payment schedule delivery warranty liability notice signature"
).split()


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def noise_png(seed: int, side: int = 64) -> bytes:
    """A side x side RGB noise PNG; every seed gives different pixels (and fake-engine text)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    return encode_png(Image.fromarray(pixels, "RGB"))


def a4_text_page(seed: int, size: tuple[int, int] = (1240, 1754)) -> Image.Image:
    """A4 at 150 dpi: a title and about 40 lines of 11-12 pt running text, like a scanned letter."""
    rng = random.Random(seed)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    title = ImageFont.truetype(str(FONT), 40) if FONT.exists() else ImageFont.load_default(size=40)
    body = ImageFont.truetype(str(FONT), 24) if FONT.exists() else ImageFont.load_default(size=24)
    draw.text((110, 110), f"Report {seed}: " + " ".join(rng.choices(WORDS, k=3)).title(), fill="black", font=title)
    y = 200
    while y < size[1] - 150:
        if rng.random() < 0.12:  # paragraph break
            y += 36
            continue
        line = " ".join(rng.choices(WORDS, k=rng.randint(8, 10)))
        draw.text((110, y), line.capitalize() + ".", fill="black", font=body)
        y += 36
    return image
