"""PDF documents: count pages at open, rasterise one page at a time with pypdfium2.

This code runs only in the decoding child processes (`decoder.py`), under their time
and memory budgets. pypdfium2 (Apache-2.0/BSD-3; not the AGPL PyMuPDF) wraps pdfium,
which is not thread-safe, even across separate documents (pypdfium2's README, "Thread
incompatibility"), so every pdfium call in a process runs under one module-level lock.
A child serves one request at a time, so the lock never waits there; it stays so that
this module is safe wherever it runs. Measured on the 2-core dev machine: opening a
10-page PDF takes about 0.06 ms (pdfium parses lazily; 0.3 ms for 300 pages), rendering
one A4 page at 144 dpi (1190x1684) 11-13 ms for a text page and 44-63 ms for a scanned
page; reopening per page adds little (page 300 of 300: 16 ms).

Nothing stays open between calls: `load_page` reopens the document from its bytes, draws
one page and closes everything, so pages are never all in memory at once (upstream
crashed a host on 2,800 pages).

A page whose raster at `pdf_dpi` would exceed `max_pixels` (`OCR_PDF_MAX_PIXELS`, 16 MP
by default, never more than `OCR_MAX_IMAGE_PIXELS`) is not refused: a poster, a drawing
or a huge /MediaBox is legitimate, and it is drawn scaled down to fit. No engine reads
more than that. DeepSeek-OCR's Gundam mode resizes a page to a 1024 px global view plus
at most six 640 px tiles (at most 1920x1280 px, 2.5 MP). RapidOCR's detector sees the
page's longer side at 960 px, so a line it finds is at least about 10 px tall there; its
recogniser crops that line from the full raster and resizes it to 48 px high, and a
16 MP raster has a longer side of at least 4000 px, where the same line is at least
40 px tall. What it costs a large-format drawing: A4 (2.0 MP at 144 dpi), A3 (4.0 MP)
and A2 (8.0 MP) keep 144 dpi; A1 (16.1 MP) gets 143 dpi, A0 (32 MP) 101 dpi, a 36x48 inch
E-size sheet 96 dpi, a 200x200 inch page 20 dpi. What it saves: a 16 MP page is 64 MB as
a Pillow RGB image (4 bytes a pixel), so a batch of 8 holds about 512 MB instead of
1.9 GB at 60 MP, and drawing time falls with the pixel count (a full-page fill: 7.6 ms
at 16 MP, 27 ms at 60 MP).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import ClassVar

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

from ocr_service.documents.document import DocumentError, DocumentLimits, Raster

_PDFIUM_LOCK = threading.Lock()
_POINTS_PER_INCH = 72.0
_WHITE = (255, 255, 255, 255)


@dataclass(frozen=True)
class PdfDocument:
    """A PDF upload: its encoded bytes and its page count."""

    data: bytes = field(repr=False)
    page_count: int
    dpi: int
    max_pixels: int  # of the raster: a bigger page is drawn scaled down
    kind: ClassVar[str] = "pdf"
    media_type: ClassVar[str] = "application/pdf"

    @property
    def nbytes(self) -> int:
        return len(self.data)

    @classmethod
    def open(cls, data: bytes, limits: DocumentLimits) -> PdfDocument:
        """Open with pdfium to refuse damaged and encrypted files and count the pages."""
        with _PDFIUM_LOCK:
            pdf = _load(data)
            try:
                page_count = len(pdf)
            finally:
                pdf.close()
        if page_count < 1:
            raise DocumentError("The PDF has no pages.")
        if page_count > limits.max_pdf_pages:
            raise DocumentError(f"The PDF has {page_count} pages; the limit is {limits.max_pdf_pages} pages.")
        return cls(data, page_count, limits.pdf_dpi, limits.pdf_raster_pixels)

    def draw(self, index: int) -> Raster:
        """Rasterise page `index` at the configured dpi (scaled down to fit the pixel limit)."""
        if not 0 <= index < self.page_count:
            raise IndexError(f"page {index} of {self.page_count}")
        with _PDFIUM_LOCK:
            pdf = _load(self.data)
            try:
                return _rasterize(pdf, index, self.dpi, self.max_pixels)
            finally:
                pdf.close()


def render_scale(width_pt: float, height_pt: float, dpi: int, max_pixels: int) -> float:
    """Pixels per PDF point: `dpi / 72`, lowered when the raster would exceed `max_pixels`."""
    scale = dpi / _POINTS_PER_INCH
    if _raster_pixels(width_pt, height_pt, scale) > max_pixels:
        scale = math.sqrt(max_pixels / (width_pt * height_pt))
        while _raster_pixels(width_pt, height_pt, scale) > max_pixels:  # ceil rounding
            scale *= 0.999
    return scale


def _raster_pixels(width_pt: float, height_pt: float, scale: float) -> int:
    # pypdfium2 sizes the bitmap as ceil(points * scale) on each side.
    return math.ceil(width_pt * scale) * math.ceil(height_pt * scale)


def _load(data: bytes) -> pdfium.PdfDocument:
    """Open `data` with pdfium (lock held), turning its failures into user-facing errors."""
    try:
        return pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        code = getattr(exc, "err_code", None)
        # pdfium's last-error code can be stale from an earlier failure (it is not
        # reset on every path), so the /Encrypt dictionary confirms a password error.
        if code in (pdfium_c.FPDF_ERR_PASSWORD, pdfium_c.FPDF_ERR_SECURITY) and b"/Encrypt" in data:
            raise DocumentError("The PDF is encrypted (password-protected); send an unencrypted copy.") from exc
        if code == pdfium_c.FPDF_ERR_FORMAT:
            raise DocumentError("The PDF is damaged or not a valid PDF and cannot be opened.") from exc
        # pdfium refuses a document without pages this way too (its error code says success).
        raise DocumentError("The PDF cannot be opened: it has no pages or is damaged.") from exc


def _rasterize(pdf: pdfium.PdfDocument, index: int, dpi: int, max_pixels: int) -> Raster:
    """Draw one page to RGB rows (lock held)."""
    where = f"Page {index + 1} of the PDF"
    try:
        page = pdf[index]
    except pdfium.PdfiumError as exc:
        raise DocumentError(f"{where} is damaged and cannot be rendered.") from exc
    try:
        width_pt, height_pt = page.get_size()  # after the page's /Rotate, which render applies
        if not (math.isfinite(width_pt) and math.isfinite(height_pt) and width_pt > 0 and height_pt > 0):
            raise DocumentError(f"{where} has no usable size ({width_pt} x {height_pt} points).")
        scale = render_scale(width_pt, height_pt, dpi, max_pixels)
        try:
            # RGB byte order and no alpha (an opaque fill): the rows go out as they are.
            bitmap = page.render(scale=scale, fill_color=_WHITE, draw_annots=True, rev_byteorder=True)
        except (pdfium.PdfiumError, ValueError) as exc:
            raise DocumentError(f"{where} cannot be rendered.") from exc
        try:
            if bitmap.mode != "RGB":
                raise DocumentError(f"{where} was drawn in an unexpected pixel format ({bitmap.mode}).")
            # One copy, so the rows outlive the bitmap (pdfium frees its buffer on close).
            return Raster(bitmap.width, bitmap.height, bitmap.stride, bytes(bitmap.buffer))
        finally:
            bitmap.close()
    finally:
        page.close()
