"""Progress of a command-line run on stderr: pages done, pages per second, time left.

On a terminal it is a tqdm bar counted in pages; otherwise (a log, CI) one plain line
per finished input. The total is an estimate until every task has been seen: pages
known so far, plus the mean pages per known input for each input not yet seen.
"""

from __future__ import annotations

import time
from typing import TextIO

from tqdm import tqdm


class ProgressReport:
    def __init__(self, inputs: int, stream: TextIO) -> None:
        self.inputs = inputs
        self.stream = stream
        self.pages: dict[str, tuple[int, int]] = {}  # input -> (pages done, pages total)
        self.ended = 0
        self.started = time.monotonic()
        self.bar: tqdm | None = None
        if stream.isatty():
            self.bar = tqdm(total=inputs, unit="page", file=stream, dynamic_ncols=True, smoothing=0.1)

    @property
    def pages_done(self) -> int:
        return sum(done for done, _ in self.pages.values())

    def estimated_total(self) -> int:
        known = sum(total for _, total in self.pages.values())
        seen = len(self.pages)
        mean = known / seen if seen and known else 1.0
        return max(known + round((self.inputs - seen) * mean), self.pages_done)

    def update(self, key: str, pages_done: int, pages_total: int) -> None:
        before = self.pages_done
        self.pages[key] = (pages_done, max(pages_total, pages_done))
        if self.bar is not None:
            self.bar.total = self.estimated_total()
            self.bar.update(self.pages_done - before)

    def finished(self, key: str, message: str, ok: bool) -> None:
        """An input ended: written, or failed with `message`."""
        self.ended += 1
        if key not in self.pages:
            self.pages[key] = (0, 0)
        if self.bar is not None:
            if not ok:
                self.bar.write(message, file=self.stream)
            self.bar.total = self.estimated_total()
            self.bar.refresh()
        else:
            print(f"{message}  [{self.summary()}]", file=self.stream, flush=True)

    def summary(self) -> str:
        elapsed = time.monotonic() - self.started
        done = self.pages_done
        rate = done / elapsed if elapsed > 0 else 0.0
        left = self.estimated_total() - done
        eta = f"{left / rate:.0f} s" if rate > 0 else "?"
        return f"{self.ended}/{self.inputs} inputs, {done} pages, {rate:.2f} pages/s, ETA {eta}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
