"""DeepSeek-OCR serving: images and PDFs in, Markdown with layout boxes out."""

__version__ = "0.1.0"
