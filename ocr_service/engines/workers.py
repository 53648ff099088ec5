"""Engine workers: the model in processes of its own, one per device, behind the Engine protocol.

`WorkerPool` is an engine to the batcher like any other. Each worker is a child process
that builds the real engine (from a picklable factory), loads it, warms it up and then
runs the batches it is sent. So HTTP handling never shares an interpreter lock with
generation, a host with several GPUs is used by one service, and an engine that crashes
(a CUDA error, a segfault in a kernel) takes down one worker, not the service.

- Routing: a batch goes to the ready worker with the fewest pages outstanding.
- Transport: pages are decoded in the service (documents' own bounded decoding) and
  cross to the worker as raw RGB in shared memory, never pickled; the worker copies them
  and says so, and the block is freed at once. A page whose pixels already went to the
  worker with a hint (below) crosses as its key alone, and is not decoded again.
- Pipelining: while workers are busy, the batches the batcher hints as the next ones are
  sent to the workers in the order they will probably be free; each engine prepares its
  hinted pages (decode, image processor) while its current batch generates. The pages stay
  in the service's queue: a hint is speculative work, thrown away if the batch differs.
- Faults: a worker that dies is restarted. The pages it had are retried once, each on
  its own, on a live worker; a page that then crashes a worker again fails alone with an
  error that says the engine crashed. The pool is healthy while any worker is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import Any

from PIL import Image

from ocr_service.engines.base import (
    DecodedPage,
    Engine,
    EngineError,
    EngineOutOfMemory,
    ImagePage,
    PageOutcome,
    PageRequest,
    Prefetching,
    decode,
)

logger = logging.getLogger(__name__)

STOP_TIMEOUT = 10.0  # seconds a worker gets to close its engine before it is killed
RESTART_DELAY_MAX = 30.0  # seconds between restarts of a worker that keeps dying


@dataclass(frozen=True)
class WorkerOptions:
    name: str  # the engine's name
    factory: Callable[[], Engine]  # picklable: builds the (unloaded) engine inside a worker
    devices: tuple[str, ...]  # CUDA_VISIBLE_DEVICES of each worker ("" = not pinned); one worker each
    batches_per_worker: int | None  # the engine's own max_batches_in_flight
    prefetching: bool  # whether the engine prepares hinted batches
    start_timeout: float = 900.0  # seconds a worker may take to load and warm up


class WorkerState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    STOPPED = "stopped"


@dataclass(frozen=True)
class WorkerStatus:
    """One worker as `/stats` lists it."""

    id: int
    pid: int | None
    device: str
    state: str
    pages_in_flight: int
    restarts: int


class WorkerCrashed(Exception):
    """The worker process died while it had this batch."""


@dataclass(frozen=True)
class _Page:
    """A decoded page on its way to a worker: its pixels are in shared memory `block`, or
    (block "") already with the worker, which got them with the latest hint."""

    block: str
    width: int
    height: int
    prompt: str
    temperature: float
    max_tokens: int
    key: str


class _Worker:
    """The service's handle on one worker process."""

    def __init__(self, number: int, device: str) -> None:
        self.number = number
        self.device = device
        self.state = WorkerState.STARTING
        self.process: multiprocessing.process.BaseProcess | None = None
        self.conn: Connection | None = None
        self.restarts = 0
        self.pages_in_flight = 0
        self.batches: dict[int, asyncio.Queue[tuple[str, Any]]] = {}  # batch id -> its messages
        self.blocks: dict[int, list[SharedMemory]] = {}  # message id -> blocks the worker has not copied yet
        self.busy_since: dict[int, float] = {}  # batch id -> when it was sent
        self.hinted: tuple[str, ...] = ()  # keys of the batch it was asked to prepare
        self.holds: frozenset[str] = frozenset()  # keys of hinted pages whose pixels it has
        self.sending: set[str] = set()  # keys of hinted pages being decoded for it
        self.hints: set[asyncio.Task[None]] = set()  # the tasks that decode and send them
        self.ready = threading.Event()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


class WorkerPool:
    def __init__(self, options: WorkerOptions) -> None:
        self.options = options
        self.name = options.name
        per_worker = options.batches_per_worker
        self.instances = len(options.devices)
        self.max_batches_in_flight = None if per_worker is None else per_worker * self.instances
        self._workers = [_Worker(number, device) for number, device in enumerate(options.devices)]
        self._context = multiprocessing.get_context("spawn")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ids = itertools.count(1)
        self._closing = False
        self._someone_ready = asyncio.Event()

    # -- life ------------------------------------------------------------------

    def load(self) -> None:
        """Start every worker and wait until each has loaded and warmed up its engine."""
        for worker in self._workers:
            self._start(worker)
        deadline = time.monotonic() + self.options.start_timeout
        for worker in self._workers:
            if not worker.ready.wait(max(0.0, deadline - time.monotonic())):
                raise RuntimeError(
                    f"engine worker {worker.number} ({self._device_text(worker)}) did not load within "
                    f"{self.options.start_timeout:g} s; see its log lines above"
                )
            if worker.state is not WorkerState.READY:
                raise RuntimeError(f"engine worker {worker.number} ({self._device_text(worker)}) failed to start")

    def close(self) -> None:
        self._closing = True
        for worker in self._workers:
            self._stop(worker)

    def healthy(self) -> bool:
        """True while at least one worker can take work."""
        return any(worker.state is WorkerState.READY for worker in self._workers)

    def workers(self) -> list[WorkerStatus]:
        return [
            WorkerStatus(w.number, w.pid, w.device, w.state.value, w.pages_in_flight, w.restarts) for w in self._workers
        ]

    # -- the engine protocol ---------------------------------------------------

    async def run(self, pages: Sequence[PageRequest]) -> AsyncIterator[tuple[int, PageOutcome]]:
        self._loop = asyncio.get_running_loop()
        items = list(enumerate(pages))
        crashed: list[tuple[int, PageRequest]] = []
        try:
            async for index, outcome in self._run_on_worker(items):
                yield index, outcome
        except WorkerCrashed as exc:
            done = exc.args[1] if len(exc.args) > 1 else set()
            crashed = [item for item in items if item[0] not in done]
            first_crash = str(exc.args[0])
        if not crashed:
            return
        # Retried once, each page on its own: the page at fault crashes a worker again, alone.
        for item in crashed:
            try:
                async for _, outcome in self._run_on_worker([item]):
                    yield item[0], outcome
            except WorkerCrashed as again:
                yield item[0], EngineError(
                    f"the engine crashed on this page twice ({first_crash}; then {again.args[0]}); it was not retried again"
                )

    def prefetch(self, batches: Sequence[Sequence[PageRequest]]) -> None:
        """Each hinted batch goes to a worker: the first to the one likely free first, and so on."""
        if not self.options.prefetching or self._loop is None:
            return
        for worker, pages in zip(self._likely_order(), batches, strict=False):
            keys = tuple(page.key for page in pages)
            if not all(keys) or worker.hinted == keys:
                continue
            worker.hinted = keys
            # Pages come one by one while a batch waits for companions: each hint sends only
            # the pages the worker has not got, or is not being sent, already.
            fresh = [page for page in pages if page.key not in worker.holds and page.key not in worker.sending]
            worker.sending.update(page.key for page in fresh)
            hint = self._loop.create_task(self._send_hint(worker, fresh))
            worker.hints.add(hint)
            hint.add_done_callback(worker.hints.discard)

    # -- sending work ----------------------------------------------------------

    async def _run_on_worker(self, items: list[tuple[int, PageRequest]]) -> AsyncIterator[tuple[int, PageOutcome]]:
        """Run pages (index, request) on one worker; yields (index, outcome). Raises
        WorkerCrashed (message, indexes done) if the worker dies first."""
        keys = [page.key for _, page in items]
        worker = await self._pick(keys)
        batch_id = next(self._ids)
        messages: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        worker.batches[batch_id] = messages
        worker.pages_in_flight += len(items)
        worker.busy_since[batch_id] = time.monotonic()
        done: set[int] = set()
        try:
            if worker.hints and not worker.sending.isdisjoint(keys):
                await asyncio.wait(set(worker.hints))  # pages on their way: decoded and sent once, not twice
            worker.hinted = () if worker.hinted == tuple(keys) else worker.hinted
            held = worker.holds
            worker.holds = held.difference(keys)
            sending: list[tuple[int, PageRequest, Image.Image | None]] = []
            for (index, page), decoded in zip(items, await self._decode_unless_held(items, held), strict=True):
                if isinstance(decoded, Exception):
                    done.add(index)
                    worker.pages_in_flight -= 1
                    yield index, decoded
                else:
                    sending.append((index, page, decoded))
            if not sending:
                return
            self._send(worker, "run", batch_id, [(page, image) for _, page, image in sending])
            while True:
                kind, payload = await messages.get()
                if kind == "page":
                    position, outcome = payload
                    done.add(sending[position][0])
                    worker.pages_in_flight -= 1
                    yield sending[position][0], outcome
                elif kind == "oom":
                    raise EngineOutOfMemory(payload)
                elif kind == "error":
                    raise EngineError(payload)
                elif kind == "crashed":
                    raise WorkerCrashed(payload, done)
                else:  # "done"
                    return
        finally:
            worker.batches.pop(batch_id, None)
            worker.busy_since.pop(batch_id, None)
            worker.pages_in_flight -= len(items) - len(done)

    @staticmethod
    async def _decode_unless_held(
        items: list[tuple[int, PageRequest]], held: frozenset[str]
    ) -> list[Image.Image | Exception | None]:
        """Each page's pixels, None where the worker has them already, or why it cannot be read."""

        async def pixels(page: PageRequest) -> Image.Image | Exception | None:
            if page.key and page.key in held:
                return None
            decoded = await asyncio.to_thread(decode, page)
            return decoded if isinstance(decoded, Exception) else decoded.image

        return list(await asyncio.gather(*(pixels(page) for _, page in items)))

    async def _pick(self, keys: list[str]) -> _Worker:
        """The ready worker with the fewest pages outstanding (the one holding these pages'
        hint among equals); waits while none is ready."""
        while True:
            ready = [w for w in self._workers if w.state is WorkerState.READY]
            if ready:
                fewest = min(w.pages_in_flight for w in ready)
                idle = [w for w in ready if w.pages_in_flight == fewest]
                return next((w for w in idle if w.hinted == tuple(keys)), idle[0])
            if self._closing:
                raise EngineError("the engine workers are shutting down")
            self._someone_ready.clear()
            await self._someone_ready.wait()

    def _likely_order(self) -> list[_Worker]:
        """The ready workers, the one likely to be free first first: idle ones, then by the
        age of the oldest batch each runs."""
        ready = [w for w in self._workers if w.state is WorkerState.READY]
        return sorted(ready, key=lambda w: (w.pages_in_flight > 0, min(w.busy_since.values(), default=0.0)))

    async def _send_hint(self, worker: _Worker, pages: Sequence[PageRequest]) -> None:
        """Decode hinted pages and send those still hinted, with the worker's whole hint: it
        keeps the pages of that hint it has, and drops the others."""
        try:
            decoded = await asyncio.gather(*(asyncio.to_thread(decode, page) for page in pages))
            hinted = worker.hinted
            wanted = [
                (request, page.image)
                for page, request in zip(decoded, pages, strict=True)
                if isinstance(page, DecodedPage) and request.key in hinted
            ]
            if worker.state is WorkerState.READY and (wanted or not worker.holds.issubset(hinted)):
                with contextlib.suppress(OSError):
                    self._send(worker, "prefetch", 0, wanted, hinted)
                    worker.holds = worker.holds.intersection(hinted).union(request.key for request, _ in wanted)
        finally:
            worker.sending.difference_update(page.key for page in pages)

    def _send(
        self,
        worker: _Worker,
        kind: str,
        batch_id: int,
        pages: Sequence[tuple[PageRequest, Image.Image | None]],
        hinted: tuple[str, ...] = (),
    ) -> None:
        """Send pages to the worker: each with its pixels in a new shared-memory block, or
        (image None) by key alone, for pages whose pixels it holds. A hint ("prefetch")
        also names every page of the worker's current hint."""
        message_id = next(self._ids)
        blocks = [None if image is None else _to_shared_memory(image) for _, image in pages]
        worker.blocks[message_id] = [block for block in blocks if block is not None]
        items = [
            _Page(
                block.name if block is not None else "",
                image.width if image is not None else 0,
                image.height if image is not None else 0,
                page.prompt,
                page.temperature,
                page.max_tokens,
                page.key,
            )
            for block, (page, image) in zip(blocks, pages, strict=True)
        ]
        try:
            assert worker.conn is not None
            worker.conn.send((kind, message_id, batch_id, items, hinted))
        except (OSError, AssertionError):
            self._free_blocks(worker, message_id)
            raise

    # -- messages from workers (each worker's reader thread hands them to the loop) ---------

    def _on_message(self, worker: _Worker, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "copied":
            self._free_blocks(worker, message[1])
        elif kind in ("page", "oom", "error", "done"):
            queue = worker.batches.get(message[1])
            if queue is not None:
                queue.put_nowait((kind, message[2] if len(message) > 2 else None))

    def _free_blocks(self, worker: _Worker, message_id: int) -> None:
        for block in worker.blocks.pop(message_id, []):
            block.close()
            with contextlib.suppress(FileNotFoundError):
                block.unlink()

    def _on_death(self, worker: _Worker, reason: str) -> None:
        """On the loop: fail the worker's batches over to a restart."""
        for message_id in list(worker.blocks):
            self._free_blocks(worker, message_id)
        for queue in worker.batches.values():
            queue.put_nowait(("crashed", reason))
        worker.hinted, worker.holds = (), frozenset()  # a new process holds nothing
        if self._closing:
            return
        worker.restarts += 1
        worker.state = WorkerState.RESTARTING
        delay = min(RESTART_DELAY_MAX, 0.5 * 2 ** (worker.restarts - 1))  # an engine that keeps dying backs off
        logger.error(
            "engine worker %d (%s) died: %s; restarting it in %g s", worker.number, self._device_text(worker), reason, delay
        )
        threading.Thread(
            target=self._restart, args=(worker, delay), name=f"restart-worker-{worker.number}", daemon=True
        ).start()

    def _restart(self, worker: _Worker, delay: float) -> None:
        time.sleep(delay)
        if not self._closing:
            self._start(worker)

    # -- processes ---------------------------------------------------------------

    def _start(self, worker: _Worker) -> None:
        """Spawn the worker's process and a thread that reads its messages (blocking: a thread)."""
        parent, child = self._context.Pipe()
        worker.ready.clear()
        worker.conn = parent
        worker.process = self._context.Process(
            target=_worker_main,
            args=(self.options.factory, worker.device, child),
            name=f"ocr-engine-worker-{worker.number}",
            daemon=True,
        )
        worker.process.start()
        child.close()
        threading.Thread(target=self._read, args=(worker, parent), name=f"worker-{worker.number}-reader", daemon=True).start()

    def _read(self, worker: _Worker, conn: Connection) -> None:
        reason = "its pipe closed"
        try:
            while True:
                message = conn.recv()
                if message[0] == "ready":
                    self._became_ready(worker)
                elif message[0] == "failed":
                    reason = f"its engine failed to load: {message[1]}"
                    break
                elif self._loop is not None:
                    self._loop.call_soon_threadsafe(self._on_message, worker, message)
        except (EOFError, OSError):
            pass
        process = worker.process
        if process is not None:
            process.join(5)
            if process.exitcode is not None:
                reason = f"it exited with {_exit_text(process.exitcode)}"
        first_start = not worker.ready.is_set() and worker.restarts == 0 and worker.state is WorkerState.STARTING
        worker.state = WorkerState.STOPPED
        if first_start:  # load() reports it
            logger.error("engine worker %d (%s) failed: %s", worker.number, self._device_text(worker), reason)
            worker.ready.set()
            return
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._on_death, worker, reason)
        else:  # nothing was ever sent to it: nothing waits on the loop
            self._on_death(worker, reason)

    def _became_ready(self, worker: _Worker) -> None:
        worker.state = WorkerState.READY
        worker.ready.set()
        logger.info("engine worker %d (%s) is ready, pid %s", worker.number, self._device_text(worker), worker.pid)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._someone_ready.set)

    def _stop(self, worker: _Worker) -> None:
        process, conn = worker.process, worker.conn
        worker.state = WorkerState.STOPPED
        if process is None or conn is None:
            return
        with contextlib.suppress(OSError):
            conn.send(("stop",))
        process.join(STOP_TIMEOUT)
        if process.is_alive():
            logger.warning("engine worker %d did not stop within %g s; killing it", worker.number, STOP_TIMEOUT)
            process.kill()
            process.join()
        for message_id in list(worker.blocks):
            self._free_blocks(worker, message_id)

    @staticmethod
    def _device_text(worker: _Worker) -> str:
        return f"device {worker.device}" if worker.device else "no device pinned"


def _to_shared_memory(image: Image.Image) -> SharedMemory:
    pixels = image.convert("RGB").tobytes()
    block = SharedMemory(create=True, size=max(1, len(pixels)))
    _buffer(block)[: len(pixels)] = pixels
    return block


def _buffer(block: SharedMemory) -> memoryview:
    assert block.buf is not None  # open until close()
    return block.buf


def _exit_text(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"status {code}"


# -- inside a worker process ------------------------------------------------------------


def _worker_main(factory: Callable[[], Engine], device: str, conn: Connection) -> None:
    """A worker's whole life: pin the device, build, load and serve the engine."""
    # The service starts workers as daemons (they die with it), and a daemon may not start
    # processes; vLLM starts its engine core as one. The service still kills this worker at
    # exit: the flag is only read here, and vLLM's own processes are daemons of this one.
    multiprocessing.current_process().daemon = False
    if device:
        os.environ["CUDA_VISIBLE_DEVICES"] = device  # before anything imports torch
    try:
        engine = factory()
        engine.load()
    except Exception as exc:  # noqa: BLE001 - reported to the service, which fails its start with it
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready",))
    asyncio.run(_serve(engine, conn))
    engine.close()


@dataclass
class _Serving:
    engine: Engine
    conn: Connection
    running: set[asyncio.Task[None]] = field(default_factory=set)
    held: dict[str, PageRequest] = field(default_factory=dict)  # the latest hint's pages, by key


async def _serve(engine: Engine, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    def read() -> None:
        try:
            while True:
                message = conn.recv()
                loop.call_soon_threadsafe(inbox.put_nowait, message)
                if message[0] == "stop":
                    return
        except (EOFError, OSError):  # the service is gone
            loop.call_soon_threadsafe(inbox.put_nowait, ("stop",))

    threading.Thread(target=read, name="service-reader", daemon=True).start()
    serving = _Serving(engine, conn)
    while True:
        message = await inbox.get()
        if message[0] == "stop":
            break
        kind, message_id, batch_id, items, hinted = message
        try:
            requests = [_request(item, serving.held) for item in items]
        except KeyError as exc:  # cannot happen while the service tracks `holds` right; its bisection resends
            requests = []
            conn.send(("error", batch_id, f"the worker does not hold the pixels of page {exc}"))
            conn.send(("done", batch_id))
        finally:
            conn.send(("copied", message_id))  # the pixels are ours now: the service frees its blocks
        if kind == "prefetch":
            held = {**serving.held, **{request.key: request for request in requests}}
            serving.held = {key: held[key] for key in hinted if key in held}
            if isinstance(engine, Prefetching):
                engine.prefetch([list(serving.held.values())])
        elif kind == "run" and requests:
            task = loop.create_task(_run(serving, batch_id, requests))
            serving.running.add(task)
            task.add_done_callback(serving.running.discard)
    if serving.running:
        await asyncio.gather(*serving.running, return_exceptions=True)


def _request(item: _Page, held: dict[str, PageRequest]) -> PageRequest:
    if not item.block:
        return held.pop(item.key)
    # A spawned worker shares the service's resource tracker, where the service registered
    # the block when it made it: attaching adds nothing, and the service's unlink removes it.
    block = SharedMemory(name=item.block)
    try:
        image = Image.frombytes("RGB", (item.width, item.height), bytes(_buffer(block)[: item.width * item.height * 3]))
    finally:
        block.close()
    return PageRequest(ImagePage(image), item.prompt, item.temperature, item.max_tokens, key=item.key)


async def _run(serving: _Serving, batch_id: int, requests: list[PageRequest]) -> None:
    conn = serving.conn
    try:
        async for index, outcome in serving.engine.run(requests):
            if isinstance(outcome, Exception) and not isinstance(outcome, EngineError | EngineOutOfMemory):
                outcome = EngineError(f"{type(outcome).__name__}: {outcome}")  # any exception pickles so
            conn.send(("page", batch_id, (index, outcome)))
    except EngineOutOfMemory as exc:
        conn.send(("oom", batch_id, str(exc)))
    except Exception as exc:  # noqa: BLE001 - the service bisects the batch and fails the page at fault
        conn.send(("error", batch_id, f"{type(exc).__name__}: {exc}"))
    finally:
        conn.send(("done", batch_id))
