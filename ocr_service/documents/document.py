"""What a document is to the service, and how its format is told from its bytes.

A `Document` holds only the encoded bytes of an upload and decodes one page at a
time (`load_page`), so waiting work stays small and a long PDF never sits decoded in
memory. The format comes from the bytes alone: file names and content types lie.
Everything that touches pixels or pdfium runs in a child process of a `DecoderPool`,
within a time and memory budget (`sandbox.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from PIL import Image

if TYPE_CHECKING:
    from ocr_service.documents.sandbox import DecoderPool

SUPPORTED = "a PDF or a PNG, JPEG, WebP, TIFF, BMP or GIF image"


class DocumentError(ValueError):
    """The document cannot be read. The message is shown to the user as is."""


@dataclass(frozen=True)
class DocumentLimits:
    """Bounds on what one document may cost to decode (from Settings)."""

    max_pixels: int  # per page or frame (OCR_MAX_IMAGE_PIXELS)
    max_pdf_pages: int  # pages of a PDF, and frames of a TIFF (OCR_MAX_PDF_PAGES)
    pdf_dpi: int = 144  # rasterising resolution (OCR_PDF_DPI), upstream's 144
    pdf_max_pixels: int = 16_000_000  # a bigger PDF page is drawn scaled down to this (OCR_PDF_MAX_PIXELS)

    @property
    def pdf_raster_pixels(self) -> int:
        """The most pixels a rasterised PDF page may have."""
        return min(self.max_pixels, self.pdf_max_pixels)


class Document(Protocol):
    """An opened document: validated, pages counted, nothing decoded yet."""

    @property
    def kind(self) -> str:
        """ "image" or "pdf"."""
        ...

    @property
    def media_type(self) -> str:
        """From the bytes, e.g. "image/png", "application/pdf"."""
        ...

    @property
    def page_count(self) -> int: ...

    @property
    def nbytes(self) -> int:
        """Size of the encoded bytes held (what waiting work costs in memory)."""

    def load_page(self, index: int) -> Image.Image:
        """Decode page `index` (0-based) to RGB: an image frame with EXIF orientation
        applied, or a PDF page rasterised.

        Blocking; decodes only that page. Raises `DocumentError` if the page is corrupt
        and `IndexError` for an index outside 0..page_count-1.
        """
        ...


@dataclass(frozen=True)
class Raster:
    """A decoded page as rows of RGB bytes: what a decoding child sends back."""

    width: int
    height: int
    stride: int  # bytes per row: width * 3, or more where rows are padded
    data: bytes | bytearray

    @classmethod
    def of(cls, image: Image.Image) -> Raster:
        """The rows of an RGB image."""
        return cls(image.width, image.height, image.width * 3, image.tobytes())

    def image(self) -> Image.Image:
        return Image.frombytes("RGB", (self.width, self.height), self.data, "raw", "RGB", self.stride)


@dataclass(frozen=True)
class PageRef:
    """One page of a document, decoded only when an engine asks (`load`)."""

    document: Document
    index: int  # 0-based

    def load(self) -> Image.Image:
        return self.document.load_page(self.index)


# (magic bytes, offset, media type) for the formats we decode.
_IMAGE_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"II*\x00", 0, "image/tiff"),
    (b"MM\x00*", 0, "image/tiff"),
    (b"BM", 0, "image/bmp"),
)

# Formats users send by mistake, named so the error says what was received.
_KNOWN_OTHERS = (
    (b"PK\x03\x04", "a ZIP archive or an Office document"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"Rar!", "a RAR archive"),
    (b"7z\xbc\xaf", "a 7-Zip archive"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
    (b"\xd0\xcf\x11\xe0", "an old Microsoft Office document"),
    (b"{\\rtf", "an RTF document"),
    (b"II+\x00", "a BigTIFF image"),
)


def sniff_media_type(data: bytes) -> str:
    """Return the media type of `data` from its leading bytes, or raise `DocumentError`."""
    if not data:
        raise DocumentError("The file is empty.")
    # The PDF spec lets the header sit anywhere in the first 1024 bytes; pdfium agrees.
    if b"%PDF-" in data[:1024]:
        return "application/pdf"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    for magic, offset, media_type in _IMAGE_SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return media_type
    raise DocumentError(f"Unsupported file type{_describe(data)}: send {SUPPORTED}.")


def _describe(data: bytes) -> str:
    """A short ' (looks like ...)' hint for an unsupported upload, or ''."""
    for magic, name in _KNOWN_OTHERS:
        if data.startswith(magic):
            return f" (it looks like {name})"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"heic", b"heix", b"mif1", b"msf1", b"hevc"):
            return " (it looks like a HEIC image)"
        if brand in (b"avif", b"avis"):
            return " (it looks like an AVIF image)"
        return " (it looks like a video or ISO media file)"
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return " (it looks like an HTML page)"
    if head.startswith(b"<?xml") or head.startswith(b"<svg"):
        return " (it looks like XML or SVG)"
    if head.startswith((b"{", b"[")):
        return " (it looks like JSON)"
    if _looks_like_text(data[:512]):
        return " (it looks like plain text)"
    return ""


def _looks_like_text(head: bytes) -> bool:
    """UTF-8 without control bytes (a multi-byte character may be cut at the end)."""
    for cut in range(4):
        try:
            text = head[: len(head) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        return all(ch.isprintable() or ch in "\t\r\n" for ch in text)
    return False


def open_document(data: bytes, limits: DocumentLimits, pool: DecoderPool) -> Document:
    """Sniff the format from the bytes, then validate cheaply and count pages in `pool`.

    Blocking (call it in a worker thread). Refuses empty or unsupported data, pixel
    bombs (from the header, before decoding pixels), truncated or corrupt files,
    encrypted PDFs, PDFs without pages, documents over the page cap and documents that
    take longer than the pool's time budget to open, each with a `DocumentError` that
    says what was wrong. The returned document holds only `data`; its pages are decoded
    in `pool` too.
    """
    return pool.open(data, sniff_media_type(data), limits)
