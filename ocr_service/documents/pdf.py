"""PDF documents: count pages at open, rasterise one page at a time with pypdfium2.

pypdfium2 (Apache-2.0/BSD-3; not the AGPL PyMuPDF) wraps pdfium, which is not
thread-safe, even across separate documents (pypdfium2's README, "Thread
incompatibility"). Every pdfium call in the process therefore runs
under one module-level lock. It is a plain `threading.Lock` on purpose: callers are
worker threads, and the lock guards a process-wide C library, not service state, so
it cannot live in an object made in the lifespan. A page takes 14-80 ms at 144 dpi,
so the lock is held briefly. Measured on the 2-core dev machine: opening a 10-page PDF
takes about 0.06 ms (pdfium parses lazily; 0.3 ms for 300 pages), rendering one A4 page
at 144 dpi (1190x1684) 11-13 ms for a text page and 44-63 ms for a scanned page;
reopening per page adds little (page 300 of 300: 16 ms).

Nothing stays open between calls: `load_page` reopens the document from its bytes, draws
one page and closes everything, so a waiting PDF costs its encoded bytes and no more,
and pages are never all in memory at once (upstream crashed a host on 2,800 pages).

A page whose raster at `pdf_dpi` would exceed `max_pixels` (a poster, a drawing, a
huge /MediaBox) is not refused: it is rendered scaled down to fit the limit. Such a
page is legitimate, and the model resizes its input to at most 1280 pixels anyway.
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
from PIL import Image

from ocr_service.documents.document import DocumentError, DocumentLimits

_PDFIUM_LOCK = threading.Lock()
_POINTS_PER_INCH = 72.0
_WHITE = (255, 255, 255, 255)


@dataclass(frozen=True)
class PdfDocument:
    """A PDF upload: its encoded bytes and its page count."""

    data: bytes = field(repr=False)
    page_count: int
    dpi: int
    max_pixels: int
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
        return cls(data, page_count, limits.pdf_dpi, limits.max_pixels)

    def load_page(self, index: int) -> Image.Image:
        """Rasterise page `index` at the configured dpi (scaled down to fit the pixel limit)."""
        if not 0 <= index < self.page_count:
            raise IndexError(f"page {index} of {self.page_count}")
        with _PDFIUM_LOCK:
            pdf = _load(self.data)
            try:
                return _rasterize(pdf, index, self.dpi, self.max_pixels)
            finally:
                pdf.close()


def extract_pages(data: bytes, indices: Sequence[int]) -> bytes:
    """A new PDF of the pages `indices` (0-based, in that order) of the PDF `data`.

    Blocking. A client that asks for some pages of a long PDF gets a document of just
    those queued, so only they are rendered and read. Raises `DocumentError` as opening does.
    """
    with _PDFIUM_LOCK:
        source = _load(data)
        try:
            subset = pdfium.PdfDocument.new()
            try:
                subset.import_pages(source, pages=list(indices))
                out = io.BytesIO()
                subset.save(out)
            except pdfium.PdfiumError as exc:
                raise DocumentError("The selected pages of the PDF cannot be copied out of it.") from exc
            finally:
                subset.close()
        finally:
            source.close()
    return out.getvalue()


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


def _rasterize(pdf: pdfium.PdfDocument, index: int, dpi: int, max_pixels: int) -> Image.Image:
    """Draw one page to an RGB image (lock held)."""
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
            bitmap = page.render(scale=scale, fill_color=_WHITE, draw_annots=True)
        except (pdfium.PdfiumError, ValueError) as exc:
            raise DocumentError(f"{where} cannot be rendered.") from exc
        try:
            # A BGR bitmap: to_pil converts, so the image owns its pixels once the bitmap closes.
            image = bitmap.to_pil()
            return image if image.mode == "RGB" else image.convert("RGB")
        finally:
            bitmap.close()
    finally:
        page.close()
