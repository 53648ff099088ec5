#!/usr/bin/env python
"""Start the OCR service with settings from `OCR_*` environment variables and `.env`."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from types import FrameType

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError

from ocr_service.app import create_app, drain
from ocr_service.config import Settings
from ocr_service.logs import configure_logging

logger = logging.getLogger("ocr_service.server")


class DrainingServer(uvicorn.Server):
    """uvicorn, but the first SIGTERM (or Ctrl+C) drains the app before the server stops.

    While it drains, the server still listens: new work gets 503 with Retry-After, /ready
    answers 503, and clients can still poll the results of the batches that finish.
    Then uvicorn's own shutdown runs. A second signal stops at once, as plain uvicorn does.
    The process exits 0 after a drain: the signal was handled, not fatal.
    """

    def __init__(self, config: uvicorn.Config, app: FastAPI, grace: float) -> None:
        super().__init__(config)
        self.app = app
        self.grace = grace
        self.draining = False
        self.loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
        self.loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.draining or self.loop is None or sig not in (signal.SIGTERM, signal.SIGINT):
            super().handle_exit(sig, frame)
            return
        self.draining = True
        # A signal handler may interrupt the loop mid-step: hand the work to the loop safely.
        self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self._drain_then_exit(sig)))  # type: ignore[union-attr]

    async def _drain_then_exit(self, sig: int) -> None:
        logger.info("signal %d: draining for up to %g s (OCR_SHUTDOWN_GRACE)", sig, self.grace)
        try:
            await drain(self.app, self.grace)
        finally:
            self.should_exit = True


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
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        log_config=None,  # keep our handler and format for uvicorn's loggers too
        access_log=False,  # the app logs one line per request itself, with its request id
        # After the drain, open HTTP requests (polls, uploads) get the same grace to complete.
        timeout_graceful_shutdown=max(1, round(settings.shutdown_grace)),
    )
    DrainingServer(config, app, settings.shutdown_grace).run()


if __name__ == "__main__":
    main()
