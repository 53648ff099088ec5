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

__all__ = ["SUPPORTED", "Document", "DocumentError", "DocumentLimits", "PageRef", "open_document", "sniff_media_type"]
