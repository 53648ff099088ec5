"""The probe's pages and the warm-up page: a rendered A4 text page with a table, and the tallest strip Gundam cuts."""

from __future__ import annotations

from typing import Any

from PIL import Image, ImageDraw, ImageFont

A4_AT_144_DPI = (1191, 1684)  # DeepSeek's own scripts rasterise PDFs at 144 dpi

_PARAGRAPH = (
    "The service accepts images and PDF documents, places every page in a bounded queue and groups "
    "waiting pages into batches for the model. Each page keeps its own prompt and sampling parameters. "
    "A batch that does not fit in device memory is split in halves and retried, and the live batch cap "
    "is lowered until the pages fit again. Results are returned as Markdown with layout boxes. "
)
_TABLE = [
    ("Region", "Q1 revenue", "Q2 revenue", "Growth", "Staff"),
    ("North", "1,204.50", "1,377.10", "14.3%", "212"),
    ("South", "986.00", "1,002.75", "1.7%", "175"),
    ("East", "2,310.40", "2,128.90", "-7.9%", "340"),
    ("West", "754.25", "901.60", "19.5%", "98"),
    ("Central", "1,580.00", "1,644.30", "4.1%", "260"),
    ("Total", "6,835.15", "7,054.65", "3.2%", "1,085"),
]


def render_test_page(size: tuple[int, int] = A4_AT_144_DPI) -> Image.Image:
    """A dense A4 text page: title, paragraphs at body size, a ruled table, a footer.

    It stands in for a typical document page so the probe sees realistic vision and
    output work; pass a real scan with --test-image to probe with your own pages.
    """
    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    title = ImageFont.load_default(size=40)
    body = ImageFont.load_default(size=22)  # about 11 pt at 144 dpi
    margin, y = 100, 90
    draw.text((margin, y), "Quarterly Operations Report", fill="black", font=title)
    y += 80
    words = (_PARAGRAPH * 2).split()
    for paragraph in range(3):
        y = _draw_wrapped(draw, words[paragraph * 7 :] + words[: paragraph * 7], (margin, y), width - 2 * margin, body)
        y += 24
    y = _draw_table(draw, (margin, y), width - 2 * margin, body) + 30
    while y < height - 200:
        y = _draw_wrapped(draw, words, (margin, y), width - 2 * margin, body) + 24
    draw.text((margin, height - 90), "Page 1 of 1    Confidential", fill="gray", font=body)
    return image


# A page 1 wide and 6 tall in 640 px tiles: Gundam cuts it into the most tiles it makes
# (6, its maximum, in the layout with the most tokens): 933 image tokens in vLLM's
# DeepSeek-OCR processor, against 903 for an A4 page.
TALL_PAGE = (640, 3840)


def render_tall_page(size: tuple[int, int] = TALL_PAGE) -> Image.Image:
    """The worst page for the context: a receipt-like strip of text lines."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    body = ImageFont.load_default(size=22)
    for y in range(60, size[1] - 60, 34):
        draw.text((40, y), f"Item {y // 34:03d}    1 x 12.50    12.50", fill="black", font=body)
    return image


def _draw_wrapped(draw: ImageDraw.ImageDraw, words: list[str], origin: tuple[int, int], width: int, font: Any) -> int:
    x, y = origin
    line: list[str] = []
    for word in words:
        if line and draw.textlength(" ".join([*line, word]), font=font) > width:
            draw.text((x, y), " ".join(line), fill="black", font=font)
            y += 34
            line = []
        line.append(word)
    if line:
        draw.text((x, y), " ".join(line), fill="black", font=font)
        y += 34
    return y


def _draw_table(draw: ImageDraw.ImageDraw, origin: tuple[int, int], width: int, font: Any) -> int:
    x, y = origin
    column = width // len(_TABLE[0])
    row_height = 44
    for row_number, row in enumerate(_TABLE):
        top = y + row_number * row_height
        draw.rectangle((x, top, x + column * len(row), top + row_height), outline="black", width=2)
        for col, cell in enumerate(row):
            draw.line((x + col * column, top, x + col * column, top + row_height), fill="black", width=2)
            draw.text((x + col * column + 10, top + 10), cell, fill="black", font=font)
    return y + len(_TABLE) * row_height
