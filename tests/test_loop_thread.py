"""LoopThread: one event loop of its own, used from threads and from other loops, cancellation carried over."""

from __future__ import annotations

import asyncio
import threading

import pytest

from ocr_service.engines.loop_thread import LoopThread


async def where() -> tuple[int, asyncio.AbstractEventLoop]:
    return threading.get_ident(), asyncio.get_running_loop()


def test_coroutines_run_on_its_own_loop_from_a_thread_and_from_two_other_loops() -> None:
    owned = LoopThread("test-loop")
    try:
        thread, loop = owned.call(where(), timeout=5)
        assert loop is owned.loop and thread != threading.get_ident()
        # from two loops one after the other, as the engine is used by the canary, the service, a benchmark
        assert asyncio.run(owned.run(where())) == (thread, loop)
        assert asyncio.run(owned.run(where())) == (thread, loop)
    finally:
        owned.close()
    assert owned.loop.is_closed()
    owned.close()  # twice is harmless


def test_cancelling_the_caller_cancels_the_coroutine_on_the_owned_loop() -> None:
    owned = LoopThread("test-loop")
    started, cancelled = threading.Event(), threading.Event()

    async def long_request() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()  # where vLLM's `generate` aborts the request
            raise

    async def caller() -> None:
        task = asyncio.create_task(owned.run(long_request()))
        await asyncio.to_thread(started.wait, 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(caller())
        assert cancelled.wait(5)
    finally:
        owned.close()


def test_errors_come_back_to_the_caller() -> None:
    owned = LoopThread("test-loop")

    async def fails() -> None:
        raise ValueError("boom")

    try:
        with pytest.raises(ValueError, match="boom"):
            owned.call(fails(), timeout=5)
        with pytest.raises(ValueError, match="boom"):
            asyncio.run(owned.run(fails()))
    finally:
        owned.close()
