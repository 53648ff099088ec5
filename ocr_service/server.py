"""The HTTP server: uvicorn with bounded connections and a drain on SIGTERM.

Connections are a resource a client can grow without sending a single request, so
three bounds apply before the app sees anything:
- a client must complete each request's headers within `header_timeout` seconds of
  starting it (or of connecting): idle and slowloris connections are closed;
- one client address may hold at most `per_client` connections;
- the process holds at most `total` connections, below its file limit, so it never
  runs out of descriptors for its own files and sockets.
A client over its share is disconnected at once; other clients (a load balancer's
health checks among them) keep being served. Slow request bodies are bounded by the
app (`api.limits`).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
from dataclasses import dataclass
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from ocr_service.app import drain
from ocr_service.config import Settings

logger = logging.getLogger("ocr_service.server")

FILE_LIMIT_SHARE = 0.8  # of the soft RLIMIT_NOFILE, when no connection cap is set


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float
    per_client: int
    total: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        total = settings.max_connections or int(resource.getrlimit(resource.RLIMIT_NOFILE)[0] * FILE_LIMIT_SHARE)
        return cls(settings.request_header_timeout, settings.max_connections_per_client, total)


class GuardedConfig(uvicorn.Config):
    """uvicorn's Config carrying our connection limits to the protocol instances."""

    def __init__(self, app: FastAPI, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.connection_limits = limits


class ConnectionGuard:
    """Mixin for a uvicorn HTTP protocol class: the limits in this module's docstring.

    It relies on what both of uvicorn's HTTP protocols share: `connections` (every open
    connection of the server), `client`, `transport`, and `cycle`, the request being
    answered, which is replaced when a new request's headers are complete.
    """

    connections: set[Any]
    client: tuple[str, int] | None
    transport: Any
    cycle: Any
    config: uvicorn.Config
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:  # an asyncio or a uvloop transport
        super().connection_made(transport)  # type: ignore[misc]
        limits = self._limits()
        host = self.client[0] if self.client else None
        if len(self.connections) > limits.total or (
            host is not None and sum(1 for c in self.connections if c.client and c.client[0] == host) > limits.per_client
        ):
            transport.abort()
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        before = self.cycle
        if self._deadline is None and (before is None or before.response_complete):
            self._arm()  # a new request starts: its headers must come in time
        super().data_received(data)  # type: ignore[misc]
        if self.cycle is not before:
            self._disarm()  # its headers are complete

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def _limits(self) -> ConnectionLimits:
        config = self.config
        assert isinstance(config, GuardedConfig)
        return config.connection_limits

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self._limits().header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.cycle is None or self.cycle.response_complete:
            self.transport.abort()


class GuardedH11Protocol(ConnectionGuard, H11Protocol):
    pass


def guarded_protocol() -> type[asyncio.Protocol]:
    """The guarded version of the protocol uvicorn would pick itself (httptools if installed)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return GuardedH11Protocol

    class GuardedHttpToolsProtocol(ConnectionGuard, HttpToolsProtocol):
        pass

    return GuardedHttpToolsProtocol


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

    async def startup(self, sockets: list[Any] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        loop = self.loop
        if self.draining or loop is None or sig not in (signal.SIGTERM, signal.SIGINT):
            super().handle_exit(sig, frame)
            return
        self.draining = True
        # A signal handler may interrupt the loop mid-step: hand the work to the loop safely.
        loop.call_soon_threadsafe(lambda: loop.create_task(self._drain_then_exit(sig)))

    async def _drain_then_exit(self, sig: int) -> None:
        logger.info("signal %d: draining for up to %g s (OCR_SHUTDOWN_GRACE)", sig, self.grace)
        try:
            await drain(self.app, self.grace)
        finally:
            self.should_exit = True


def serve(settings: Settings, app: FastAPI) -> None:
    """Run `app` until a signal stops it."""
    trusted = settings.trusted_proxy_list
    config = GuardedConfig(
        app,
        ConnectionLimits.from_settings(settings),
        host=settings.host,
        port=settings.port,
        http=guarded_protocol(),
        log_level=settings.log_level.lower(),
        log_config=None,  # keep our handler and format for uvicorn's loggers too
        access_log=False,  # the app logs one line per request itself, with its request id
        # The client address comes from X-Forwarded-For only behind proxies named in
        # OCR_TRUSTED_PROXIES: otherwise any client could pick its own address.
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted or None,
        # After the drain, open HTTP requests (polls, uploads) get the same grace to complete.
        timeout_graceful_shutdown=max(1, round(settings.shutdown_grace)),
    )
    DrainingServer(config, app, settings.shutdown_grace).run()
