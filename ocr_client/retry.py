"""When to try a call again, and how long to wait first: Retry-After, jittered backoff, a bounded budget."""

from __future__ import annotations

import random
from dataclasses import dataclass

import httpx

from ocr_client.errors import OcrConnectionError, error_for, retry_after_of

# Answers that mean "nothing was done, come back later": a full queue, a draining
# service, a rate limit. Any call may be sent again after them, a POST included.
REFUSALS = frozenset({429, 503})
IDEMPOTENT = frozenset({"GET", "HEAD", "DELETE"})
# Raised before a request left this machine, so even a POST cannot have been accepted.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class RetryPolicy:
    """How long one call may spend waiting between attempts, in seconds, all attempts together.

    After a 503 or 429 the call waits the server's `Retry-After` stretched by a random
    0-50% (clients told the same number would otherwise all come back at once); without
    one, an exponential backoff from `base_delay` up to `max_delay`, jittered the same
    way. Once the next wait would pass `max_wait`, the call raises instead.
    """

    max_wait: float = 120.0
    base_delay: float = 0.5
    max_delay: float = 30.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        if retry_after is not None:
            base = max(retry_after, self.base_delay)
        else:
            base = min(self.max_delay, self.base_delay * 2**attempt)
        return base * (1 + 0.5 * rng.random())


@dataclass
class Counters:
    """What a client has absorbed so far (for reports and tests)."""

    refusals: int = 0  # 503 and 429 answers waited out
    reconnects: int = 0  # transport errors retried, dropped event streams resumed


class Backoff:
    """The retry state of one call: says how long to wait before the next attempt, or raises."""

    def __init__(self, policy: RetryPolicy, rng: random.Random, counters: Counters) -> None:
        self.policy = policy
        self.rng = rng
        self.counters = counters
        self.waited = 0.0
        self.attempt = 0

    def after_response(self, response: httpx.Response) -> float | None:
        """None for an answer to keep (any but a refusal); else the wait before trying again.

        Raises the typed error (Overloaded, RateLimited) once the budget is spent; the
        body must have been read.
        """
        if response.status_code not in REFUSALS:
            return None
        delay = self._next(retry_after_of(response))
        if delay is None:
            raise error_for(response)
        self.counters.refusals += 1
        return delay

    def after_transport_error(self, error: httpx.TransportError, method: str, url: str) -> float:
        """The wait before sending again; raises OcrConnectionError when that is unsafe or over budget.

        A POST is sent again only if it never left (it could otherwise have been accepted,
        and a second one would run the document twice).
        """
        delay = self._next(None) if method in IDEMPOTENT or isinstance(error, NOT_SENT) else None
        if delay is None:
            raise OcrConnectionError(f"{method} {url}: {type(error).__name__}: {error}") from error
        self.counters.reconnects += 1
        return delay

    def after_early_end(self, url: str) -> float:
        """The wait before resuming an event stream that closed before the task ended."""
        delay = self._next(None)
        if delay is None:
            raise OcrConnectionError(f"GET {url}: the event stream kept closing before the task ended")
        self.counters.reconnects += 1
        return delay

    def reset(self) -> None:
        """Progress was made: the budget is for one outage, not for a whole long stream."""
        self.waited = 0.0
        self.attempt = 0

    def _next(self, retry_after: float | None) -> float | None:
        delay = self.policy.delay(self.attempt, retry_after, self.rng)
        if self.waited + delay > self.policy.max_wait:
            return None
        self.waited += delay
        self.attempt += 1
        return delay
