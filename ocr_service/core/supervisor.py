"""The service's life: it runs the batcher, says whether the service is ready, and ends work cleanly.

Readiness is true only while the engine is loaded (the supervisor exists only after
that) and the batcher task is alive, and only until shutdown starts. Two ways out:

- the batcher dies (its task ends with an exception): admission closes and every
  unfinished task fails with the reason, so no client polls forever;
- shutdown (SIGTERM, or the app's lifespan ending): admission closes, no new batch
  starts, running batches get `grace` seconds to finish; the waiting and unfinished
  tasks then fail with a reason, unless the task store keeps work through a restart
  (`keep_unfinished`): then they are left to run when the service starts again (or, with
  several fronts on one store, on another front).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from enum import StrEnum

from ocr_service.core.batcher import Batcher
from ocr_service.core.ledger import WorkLedger
from ocr_service.engines.workers import WorkerPool

logger = logging.getLogger(__name__)


class State(StrEnum):
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"


class Supervisor:
    def __init__(self, ledger: WorkLedger, batcher: Batcher, *, keep_unfinished: bool = False) -> None:
        self.ledger = ledger
        self.batcher = batcher
        self.keep_unfinished = keep_unfinished
        self.started_at = time.time()
        self.state = State.READY
        self.reason = ""
        self._batcher_task: asyncio.Task[None] | None = None
        self._shutdown: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the batcher and watch it."""
        self._batcher_task = asyncio.create_task(self.batcher.run(), name="batcher")
        self._batcher_task.add_done_callback(self._batcher_ended)

    @property
    def ready(self) -> bool:
        alive = self._batcher_task is not None and not self._batcher_task.done()
        return self.state is State.READY and alive and self.engine_healthy

    @property
    def engine_healthy(self) -> bool:
        """False while an engine in worker processes has none alive (they are restarting)."""
        engine = self.batcher.engine
        return engine.healthy() if isinstance(engine, WorkerPool) else True

    def _batcher_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self.state is not State.READY:
            return  # our own shutdown stopped it
        exc = task.exception()
        cause = repr(exc) if exc is not None else "it returned"
        logger.error("the batcher stopped (%s); failing unfinished work", cause, exc_info=exc)
        self.state = State.FAILED
        self.reason = f"the batcher stopped ({cause}); the service must be restarted"
        self.ledger.stop_admitting(
            retry_after=30, reason="batcher_failed", detail=f"The service takes no work: {self.reason}."
        )
        failed = self.ledger.fail_unfinished(f"the service could not finish this task: {self.reason}")
        logger.error("failed %d unfinished tasks", failed)

    async def shutdown(self, grace: float) -> None:
        """Drain and stop; safe to call more than once (the second call waits for the first)."""
        if self._shutdown is None:
            self._shutdown = asyncio.create_task(self._drain(grace), name="shutdown")
        await asyncio.shield(self._shutdown)

    async def _drain(self, grace: float) -> None:
        if self.state is State.READY:
            self.state = State.DRAINING
            self.reason = "shutting down"
        self.ledger.stop_admitting(
            retry_after=math.ceil(grace),
            reason="shutting_down",
            detail="The service is shutting down and takes no new work; send it to another replica or retry later.",
        )
        self.batcher.pause()
        if not self.keep_unfinished:
            waiting = self.ledger.fail_unfinished(
                "the service is shutting down before this task started; submit it again", waiting_only=True
            )
            logger.info("shutting down: %d waiting tasks failed", waiting)
        logger.info("shutting down: up to %g s for running batches", grace)
        try:
            await asyncio.wait_for(asyncio.shield(self.batcher.drain()), grace)
        except TimeoutError:
            logger.warning("running batches did not finish within %g s (OCR_SHUTDOWN_GRACE)", grace)
        if self.keep_unfinished:
            left = self.ledger.unfinished_count
            if left:
                logger.info("%d unfinished tasks are kept in the task store, to run after a restart", left)
        else:
            cut = self.ledger.fail_unfinished(
                f"the service shut down before this task finished (OCR_SHUTDOWN_GRACE={grace:g} s); submit it again"
            )
            if cut:
                logger.warning("failed %d tasks still running at shutdown", cut)
        if self._batcher_task is not None:
            self._batcher_task.cancel()
            await asyncio.gather(self._batcher_task, return_exceptions=True)
        if self.state is State.DRAINING:
            self.state = State.STOPPED
