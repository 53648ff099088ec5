"""How fast the service gets through pages, and what that means for a waiting client.

One meter feeds every estimate the service gives: a task's `estimated_wait_s` (waiting
or running) and the `Retry-After` of a 503.

It counts pages finished per second of wall time while the service is busy (work is
waiting or running), over the last `WINDOW_PAGES` pages. Wall time, not engine time per
batch: engines that run several batches at once (vLLM, RapidOCR's threads) finish more
pages per second than any one batch shows, and the time pages wait for companions is
part of what a client waits too. Idle time does not count, so a quiet hour does not
make the next estimate look slow.

    >>> meter = ThroughputMeter()
    >>> meter.busy_changed(True, now=0.0)
    >>> meter.pages_finished(8, now=4.0)       # 8 pages in the first 4 s of work
    >>> meter.pages_finished(8, now=8.0)
    >>> meter.pages_per_second
    2.0
    >>> meter.busy_changed(False, now=8.0)     # idle for a while: not counted
    >>> meter.busy_changed(True, now=100.0)
    >>> meter.pages_finished(4, now=102.0)
    >>> meter.pages_per_second
    2.0
"""

from __future__ import annotations

import math
from collections import deque

WINDOW_PAGES = 64  # recent pages the rate is measured over


class ThroughputMeter:
    def __init__(self) -> None:
        self._busy_since: float | None = None  # wall time the current busy spell began
        self._busy_before = 0.0  # busy seconds of earlier spells
        self._events: deque[tuple[float, int]] = deque()  # (busy clock, pages finished then)
        self._pages_in_window = 0
        self._window_start = 0.0  # busy clock where the window begins

    def busy_changed(self, busy: bool, now: float) -> None:
        """The service became busy (work waiting or running) or idle."""
        if busy and self._busy_since is None:
            self._busy_since = now
        elif not busy and self._busy_since is not None:
            self._busy_before += now - self._busy_since
            self._busy_since = None

    def pages_finished(self, count: int, now: float) -> None:
        self._events.append((self._busy_clock(now), count))
        self._pages_in_window += count
        while len(self._events) > 1 and self._pages_in_window - self._events[0][1] >= WINDOW_PAGES:
            start, dropped = self._events.popleft()
            self._pages_in_window -= dropped
            self._window_start = start

    @property
    def pages_per_second(self) -> float | None:
        """None until a page has finished."""
        if not self._events:
            return None
        elapsed = self._events[-1][0] - self._window_start
        return self._pages_in_window / elapsed if elapsed > 0 else None

    def seconds_for(self, pages: int) -> float | None:
        """Seconds to get through `pages`, or None before anything was measured."""
        rate = self.pages_per_second
        return None if not rate else pages / rate

    def retry_after(self, excess_pages: int) -> int:
        """Whole seconds until `excess_pages` have left the queue (at least 1)."""
        seconds = self.seconds_for(excess_pages)
        return 1 if seconds is None else max(1, math.ceil(seconds))

    def _busy_clock(self, now: float) -> float:
        spell = now - self._busy_since if self._busy_since is not None else 0.0
        return self._busy_before + spell
