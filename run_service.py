#!/usr/bin/env python
"""Start the OCR service with settings from `OCR_*` environment variables and `.env`."""

from __future__ import annotations

import logging
import sys

import uvicorn
from pydantic import ValidationError

from ocr_service.app import create_app
from ocr_service.config import Settings


def load_settings() -> Settings:
    """Read Settings, or exit with a message that names each bad variable."""
    try:
        return Settings()
    except ValidationError as exc:
        lines = [f"  OCR_{'_'.join(map(str, err['loc'])).upper() or '?'}: {err['msg']}" for err in exc.errors()]
        sys.exit("Invalid settings:\n" + "\n".join(lines))


def main() -> None:
    settings = load_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()
