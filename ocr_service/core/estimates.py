"""How fast the service gets through pages, and what that means for a waiting client.

One meter feeds every estimate the service gives: a waiting task's
`estimated_wait_s` and the `Retry-After` of a 503.
"""

from __future__ import annotations

import math

THROUGHPUT_SMOOTHING = 0.3  # weight of the newest batch in the pages/s estimate


class ThroughputMeter:
    """Pages per second of engine time, smoothed over batches."""

    def __init__(self) -> None:
        self.pages_per_second: float | None = None

    def batch_ran(self, size: int, seconds: float) -> None:
        if seconds <= 0:
            return
        rate = size / seconds
        old = self.pages_per_second
        self.pages_per_second = rate if old is None else old + THROUGHPUT_SMOOTHING * (rate - old)

    def seconds_for(self, pages: int) -> float | None:
        """Seconds to get through `pages`, or None before anything was measured."""
        if not self.pages_per_second:
            return None
        return pages / self.pages_per_second

    def retry_after(self, excess_pages: int) -> int:
        """Whole seconds until `excess_pages` have left the queue (at least 1)."""
        seconds = self.seconds_for(excess_pages)
        return 1 if seconds is None else max(1, math.ceil(seconds))
