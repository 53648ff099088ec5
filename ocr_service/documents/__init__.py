"""Uploaded bytes -> documents whose pages are decoded one at a time, safely."""

from ocr_service.documents.document import (
    SUPPORTED,
    Document,
    DocumentError,
    DocumentLimits,
    PageRef,
    open_document,
    sniff_media_type,
)
from ocr_service.documents.sandbox import DecoderPool

__all__ = [
    "SUPPORTED",
    "DecoderPool",
    "Document",
    "DocumentError",
    "DocumentLimits",
    "PageRef",
    "open_document",
    "sniff_media_type",
]
