#!/usr/bin/env python
"""Start the OCR service with settings from `OCR_*` environment variables and `.env`."""

from __future__ import annotations

import sys

from pydantic import ValidationError

from ocr_service.app import create_app
from ocr_service.config import Settings
from ocr_service.logs import configure_logging
from ocr_service.server import serve


def load_settings() -> Settings:
    """Read Settings, or exit with a message that names each bad variable."""
    try:
        return Settings()
    except ValidationError as exc:
        lines = [f"  OCR_{'_'.join(map(str, err['loc'])).upper() or '?'}: {err['msg']}" for err in exc.errors()]
        sys.exit("Invalid settings:\n" + "\n".join(lines))


def main() -> None:
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    serve(settings, create_app(settings))


if __name__ == "__main__":
    main()
