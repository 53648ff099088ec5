"""An event loop on a thread of its own, for a library bound to the loop that first uses it.

vLLM's `AsyncLLM` ties its output handler and its ZMQ sockets to the event loop that
sends its first request. The vLLM engine has to send requests from several loops
over its life: a canary in `load` (a worker thread, no loop), then the service's loop,
or a benchmark's and a probe's loops one after the other. So the library lives on
this loop for its whole life, and callers hand it coroutines from wherever they are.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """A running event loop in a daemon thread; `close` stops it and joins the thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coroutine` on the loop and block until it ends (from any thread but the loop's)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Await `coroutine` running on this loop from another loop.

        Cancelling the caller cancels the coroutine on this loop too (asyncio chains
        the cancellation through the concurrent future).
        """
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self.loop))

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()
