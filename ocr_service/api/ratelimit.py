"""The per-client rate limit, keyed by API key or client address, on the `limits` library.

One budget per client across all routes except the probes, so an orchestrator's
health checks never eat into it; a Prometheus scrape with a valid key does not count
either, but a request with a wrong key counts on every route, `/metrics` included, so
keys cannot be guessed at full speed anywhere. A client over its budget gets 429 with
`Retry-After` and a JSON `detail`, before its body is read.

Why `limits` directly and not slowapi's middleware (slowapi is a thin layer over
`limits`): slowapi finds a request's endpoint by scanning `app.routes` for an
`endpoint` attribute, and FastAPI 0.16x wraps included routers so none is found;
slowapi then exempts every route and limits nothing.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ocr_service.api.security import ApiKeys, presented_key

PROBES = frozenset({"/health", "/ready"})
UI_FILES = "/ui/"  # the web UI's static files: no data, and a page load fetches several


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, rate: str, api_keys: ApiKeys) -> None:
        self.app = app
        self.rate = rate
        self.items: list[RateLimitItem] = parse_many(rate)
        self.api_keys = api_keys
        # In-process storage: one budget per process (a shared Redis would need `limits`' redis storage).
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PROBES or scope["path"].startswith(UI_FILES):
            await self.app(scope, receive, send)
            return
        client = self.client_key(scope)
        if scope["path"] == "/metrics" and (client.startswith("key:") or not self.api_keys.enabled):
            await self.app(scope, receive, send)  # a scrape: never limited
            return
        for item in self.items:
            if not self.limiter.hit(item, client):
                reset_at = self.limiter.get_window_stats(item, client).reset_time
                retry_after = max(1, math.ceil(reset_at - time.time()))
                detail = f"rate limit exceeded ({item} per client, OCR_RATE_LIMIT={self.rate}); retry in {retry_after} s"
                response = JSONResponse({"detail": detail}, status_code=429, headers={"Retry-After": str(retry_after)})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def client_key(self, scope: Scope) -> str:
        """A valid API key's fingerprint, else the client address.

        Only valid keys count: keying on any header value would let a client dodge its
        address's limit by sending a new made-up key with every request.
        """
        if self.api_keys.enabled:
            owner = self.api_keys.owner_of(presented_key(Headers(scope=scope)))
            if owner is not None:
                return f"key:{owner}"
        client = scope.get("client")
        return f"addr:{client[0] if client else 'unknown'}"
