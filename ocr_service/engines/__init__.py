"""OCR engines behind one protocol: a batch of pages in, one outcome per page out."""
