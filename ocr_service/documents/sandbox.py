"""The decoder pool: every pixel-touching or pdfium call runs in a child process, within budgets.

Opening a document (format, page count, pixel bombs, completeness) and decoding one page
are calls into a small pool of child processes (`decoder.py`). Each call has a time budget
(`timeout`, OCR_DECODE_TIMEOUT, per open and per page) and each child a memory budget
(`memory_mb`, OCR_DECODE_MEMORY_MB, its address space). A call over its time gets a
`DocumentError` that names the setting, and its child is killed (SIGKILL) and replaced;
a child that dies (out of memory in a codec, a segfault) fails that call alone the same
way. A document that broke a budget once is not decoded again: its other pages fail at
once, so a 500-page stalling PDF costs one time budget, not 500. No lock of the parent
is held while a child works: other documents go on in the other children.

Why processes: pdfium is not thread-safe and cannot be interrupted, so a page built to
stall it (2,000 full-page fills on a 200-inch page) held the process-wide pdfium lock, and
with it every upload and page, for as long as it liked. Killing the process is the only way
to stop a render; a child also carries a codec crash or an allocation spree away from the
service. A child is a fresh `python -c` interpreter that imports the decoding code only
(about 0.3 s and 36 MB), so nothing of the service (threads, the event loop, a model) leaks
into it. It talks over a socket pair with multiprocessing's `Connection`. Multiprocessing's
own "spawn" and "forkserver" starts were tried first: both run the service's main script
again in every child (run_service.py imports FastAPI, uvicorn and the whole app), which took
1.7 s a child, again for each replacement.

Routing: one call per child at a time. Pages of a document go to a free child that already
holds the document's bytes, else to any free child, which is then sent them. Each child
keeps recent documents in an LRU cache bounded in bytes (`cache_mb`) and the pool mirrors
it, so a long PDF's bytes cross to a child once per child that draws its pages, not once
per page (tests/test_sandbox.py counts them). Routing, not pinning: a document is never
stuck behind another's slow page. With two or more children, pages may occupy all but
one, so an upload is always validated at once, even while every other child draws.

Cost of the trip (bench/sandbox_overhead.py, bench/results/sandbox.md; the 2-core dev machine,
heavily loaded by other jobs, so upper bounds): a page comes back as raw RGB rows over the
socket, 6 MB for an A4 page at 144 dpi (1190x1684), moved in about 3 ms; 48 MB for a 16 MP
page (the PDF raster cap) in about 270 ms, 180 MB for a 60 MP image in about 820 ms (one
48 MB memory copy took about 50 ms there). Through the pool an A4 page cost 7 ms (text PDF)
to 53 ms (PNG) more than decoded in-process; opening costs a round trip (0.1-0.4 ms for a
PDF). While it arrives, a page needs its raw rows plus the Pillow image (about 7 bytes a
pixel, briefly).

The methods block (they wait on a child): call them from worker threads, as engines
already do for `PageRef.load`, and as intake does with `asyncio.to_thread`. `close` kills
the children, working or not: every waiting call fails at once with a reason, so a
render never holds up shutdown.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from types import TracebackType

from PIL import Image

from ocr_service.documents.decoder import Failed, Lru, Missing, Open, Opened, OutOfMemory, Page, Pixels, Ready, Reply
from ocr_service.documents.document import DocumentError, DocumentLimits, Raster

logger = logging.getLogger(__name__)

MB = 1024 * 1024
_CLOSED = "The service is shutting down: the document was not decoded."
_OVER_BUDGET_IDS = 4096  # documents remembered as having broken a budget
_CHILD = "from ocr_service.documents.decoder import main; main()"
_STARTUP_TIMEOUT = 60.0  # seconds a new child may take to import the decoding code


class DecoderClosed(DocumentError):
    """The pool is closed (the service is shutting down): the call was not made, or was cut."""


@dataclass(frozen=True, eq=False)
class PooledDocument:
    """An opened document: its bytes and page count are here, its pages are drawn in the pool."""

    data: bytes = field(repr=False)
    media_type: str
    page_count: int
    limits: DocumentLimits
    pool: DecoderPool = field(repr=False)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def kind(self) -> str:
        return "pdf" if self.media_type == "application/pdf" else "image"

    @property
    def nbytes(self) -> int:
        return len(self.data)

    def load_page(self, index: int) -> Image.Image:
        return self.pool.load_page(self, index)


@dataclass
class PoolStats:
    """Counts since the pool started (tests and benchmarks read them)."""

    opens: int = 0
    pages: int = 0
    sends: int = 0  # times a document's bytes went to a child (each open, and each cache miss)
    bytes_sent: int = 0
    timeouts: int = 0
    crashes: int = 0
    starts: int = 0  # children started, replacements included


class _Worker:
    """One child: its process and socket, whether a call holds it, and a mirror of its cache."""

    def __init__(self, cache_bytes: int) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.conn: Connection | None = None
        self.ready = False  # the child said it is ready (imports done, budget set)
        self.busy = False
        self.held: Lru[str, bool] = Lru(cache_bytes)


class DecoderPool:
    """A few decoding child processes; `open` and `load_page` run in them (see the module doc)."""

    def __init__(self, workers: int = 2, timeout: float = 15.0, memory_mb: int = 2048, cache_mb: int = 64) -> None:
        if workers < 1:
            raise ValueError("a decoder pool needs at least one worker")
        self.timeout = timeout
        self.memory_mb = memory_mb
        self.cache_bytes = cache_mb * MB
        self.stats = PoolStats()
        self._workers = [_Worker(self.cache_bytes) for _ in range(workers)]
        self._lock = threading.Condition()
        self._pages_busy = 0
        self._closed = False
        self._over_budget: Lru[str, bool] = Lru(_OVER_BUDGET_IDS)

    # -- life -----------------------------------------------------------------------

    def start(self) -> None:
        """Start every child and wait until each is ready (they import in parallel: about 0.3 s
        on an idle machine). Optional: a call starts a missing child itself."""
        for worker in self._workers:
            with self._holding(worker):
                if worker.process is None:
                    self._start(worker)
        for worker in self._workers:
            with self._holding(worker):
                self._ready_child(worker)

    def close(self) -> None:
        """Kill every child, working or not; calls in progress and to come fail with a reason."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._lock.notify_all()
            working = [worker.process for worker in self._workers if worker.busy and worker.process is not None]
            idle = [worker for worker in self._workers if not worker.busy]
        for process in working:
            process.kill()  # the thread that holds the worker sees the socket close and reaps it
        for worker in idle:
            self._stop(worker)

    def __enter__(self) -> DecoderPool:
        self.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def worker_pids(self) -> list[int | None]:
        """The children's process ids (None for one not started)."""
        with self._lock:
            return [worker.process.pid if worker.process is not None else None for worker in self._workers]

    # -- calls ----------------------------------------------------------------------

    def open(self, data: bytes, media_type: str, limits: DocumentLimits) -> PooledDocument:
        """Validate `data` (sniffed as `media_type`) in a child and count its pages.

        Raises `DocumentError` for a bad document, one over the time budget, and when closed.
        """
        document_id = uuid.uuid4().hex
        where = _name(media_type)
        with self._worker_for(None, page=False) as worker:
            self._count(opens=1)
            reply, _ = self._call(worker, Open(document_id, media_type, limits), data, where, "open")
            if isinstance(reply, Opened):
                worker.held.put(document_id, True, len(data))
                return PooledDocument(data, media_type, reply.page_count, limits, self, document_id)
        raise self._error(reply, where)

    def load_page(self, document: PooledDocument, index: int) -> Image.Image:
        """Draw page `index` of `document` in a child and return it as RGB.

        Raises `IndexError` outside 0..page_count-1, and `DocumentError` for a bad page, a
        page over a budget, a page of a document that broke a budget before, and when closed.
        """
        if not 0 <= index < document.page_count:
            raise IndexError(f"page {index} of {document.page_count}")
        where = _name(document.media_type, index, document.page_count)
        with self._lock:
            over_budget = document.id in self._over_budget
        if over_budget:
            raise DocumentError(f"{where} was not decoded: this document already went over a decoding budget.")
        with self._worker_for(document.id, page=True) as worker:
            self._count(pages=1)
            reply, pixels = self._page_call(worker, document, index, where, with_data=document.id not in worker.held)
            if isinstance(reply, Missing):  # the mirror was wrong: send the bytes after all
                reply, pixels = self._page_call(worker, document, index, where, with_data=True)
            worker.held.put(document.id, True, document.nbytes)
        if isinstance(reply, Pixels) and pixels is not None:
            return Raster(reply.width, reply.height, reply.stride, pixels).image()
        raise self._error(reply, where)

    def _page_call(
        self, worker: _Worker, document: PooledDocument, index: int, where: str, *, with_data: bool
    ) -> tuple[Reply, bytearray | None]:
        request = Page(document.id, document.media_type, document.page_count, document.limits, index, with_data)
        return self._call(worker, request, document.data if with_data else None, where, "decode")

    def _call(
        self, worker: _Worker, request: Open | Page, data: bytes | None, where: str, action: str
    ) -> tuple[Reply, bytearray | None]:
        """Send one request (and `data`) to the worker's child and wait, at most the time budget,
        for its reply; a `Pixels` reply comes with its bytes. A child over the budget, or one
        that dies, is replaced, and the request's document is not decoded again."""
        conn = self._ready_child(worker)
        try:
            conn.send(request)
            if data is not None:
                conn.send_bytes(data)
                self._count(sends=1, bytes_sent=len(data))
            if not conn.poll(self.timeout):
                self._count(timeouts=1)
                self._over_budget_now(request.doc_id)
                self._replace(worker)
                logger.warning("%s took more than %g s to %s; its decoder was killed", where, self.timeout, action)
                limit = f"OCR_DECODE_TIMEOUT={self.timeout:g} s" + (" per page" if action == "decode" else "")
                raise DocumentError(
                    f"{where} took more than {self.timeout:g} s to {action} and was stopped; the limit is {limit}."
                )
            reply: Reply = conn.recv()
            if not isinstance(reply, Pixels):
                return reply, None
            pixels = bytearray(reply.stride * reply.height)
            conn.recv_bytes_into(pixels)
            return reply, pixels
        except (EOFError, OSError):
            if self._closed:
                self._stop(worker)
                raise DecoderClosed(_CLOSED) from None
            self._count(crashes=1)
            self._over_budget_now(request.doc_id)
            how = _exit_reason(self._replace(worker))
            logger.warning("the decoder stopped (%s) during: %s, %s", how, where, action)
            raise DocumentError(
                f"{where} could not be decoded: the decoding process stopped ({how}). The file may be "
                f"malformed, or need more than the {self.memory_mb} MB a decoder may use (OCR_DECODE_MEMORY_MB)."
            ) from None

    def _ready_child(self, worker: _Worker) -> Connection:
        """The worker's connection to a child that is ready: started and waited for if need be
        (a child's start is not part of any call's budget)."""
        failure = ""
        try:
            if worker.conn is None:
                self._start(worker)
            conn = worker.conn
            assert conn is not None
            if worker.ready:
                return conn
            if conn.poll(_STARTUP_TIMEOUT) and isinstance(conn.recv(), Ready):
                worker.ready = True
                return conn
            failure = f"none was ready within {_STARTUP_TIMEOUT:g} s"
        except (EOFError, OSError) as exc:
            if self._closed:
                raise DecoderClosed(_CLOSED) from None
            failure = str(exc) or type(exc).__name__
        exitcode = self._stop(worker)
        logger.error("a decoding process could not start (%s, %s)", failure, _exit_reason(exitcode))
        raise DocumentError(f"No decoding process could start ({failure}).")

    def _over_budget_now(self, document_id: str) -> None:
        """Remember that this document broke a budget: its other pages fail at once."""
        with self._lock:
            self._over_budget.put(document_id, True, 1)

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self.stats, name, getattr(self.stats, name) + delta)

    def _error(self, reply: Reply, where: str) -> DocumentError:
        if isinstance(reply, Failed):
            return DocumentError(reply.message)
        if isinstance(reply, OutOfMemory):
            return DocumentError(
                f"{where} needs more memory to decode than the {self.memory_mb} MB a decoder may use "
                "(OCR_DECODE_MEMORY_MB)."
            )
        return DocumentError(f"{where} could not be decoded (unexpected answer {type(reply).__name__}).")

    # -- children -------------------------------------------------------------------

    @contextlib.contextmanager
    def _worker_for(self, document_id: str | None, *, page: bool) -> Iterator[_Worker]:
        """Hold a free worker for one call: for a page, preferably one that has the document."""
        with self._lock:
            while True:
                if self._closed:
                    raise DecoderClosed(_CLOSED)
                worker = self._pick(document_id, page)
                if worker is not None:
                    break
                self._lock.wait()
            worker.busy = True
            self._pages_busy += page
        try:
            yield worker
        finally:
            self._release(worker, page)

    @contextlib.contextmanager
    def _holding(self, worker: _Worker) -> Iterator[None]:
        """Hold this worker (waiting until it is free)."""
        with self._lock:
            while worker.busy:
                self._lock.wait()
            if self._closed:
                raise DecoderClosed(_CLOSED)
            worker.busy = True
        try:
            yield
        finally:
            self._release(worker, False)

    def _pick(self, document_id: str | None, page: bool) -> _Worker | None:
        free = [worker for worker in self._workers if not worker.busy]
        # Pages leave one child free for opening uploads (when there are two or more).
        if page and len(self._workers) > 1 and self._pages_busy >= len(self._workers) - 1:
            return None
        holding = [worker for worker in free if document_id is not None and document_id in worker.held]
        started = [worker for worker in free if worker.process is not None]
        candidates = holding or started or free
        return candidates[0] if candidates else None

    def _release(self, worker: _Worker, page: bool) -> None:
        with self._lock:
            worker.busy = False
            self._pages_busy -= page
            closed = self._closed
            self._lock.notify_all()
        if closed:  # close() left this one to us
            self._stop(worker)

    def _start(self, worker: _Worker) -> None:
        """Start the worker's child, without waiting for it to be ready (the caller holds the worker)."""
        parent_end, child_end = socket.socketpair()
        try:
            budgets = (str(self.memory_mb * MB), str(self.cache_bytes), str(self.timeout))
            process = subprocess.Popen(
                [sys.executable, "-c", _CHILD, str(child_end.fileno()), *budgets],
                pass_fds=(child_end.fileno(),),
                stdin=subprocess.DEVNULL,
                env=_child_environment(),
            )
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()  # the child's end lives in the child now: EOF here when it dies
        conn = Connection(parent_end.detach())
        with self._lock:
            if not self._closed:
                worker.process, worker.conn, worker.ready = process, conn, False
                worker.held.clear()
                self.stats.starts += 1  # under the lock
                return
        process.kill()
        process.wait()
        conn.close()
        raise DecoderClosed(_CLOSED)

    def _replace(self, worker: _Worker) -> int | None:
        """Kill the worker's child and start a new one (the caller holds the worker); return
        the old one's exit code. A new one that cannot start is started by the next call."""
        exitcode = self._stop(worker)
        with contextlib.suppress(OSError, DocumentError):
            self._start(worker)
        return exitcode

    def _stop(self, worker: _Worker) -> int | None:
        """Kill and reap the worker's child (the caller holds the worker); return its exit code."""
        with self._lock:
            process, conn = worker.process, worker.conn
            worker.process, worker.conn = None, None
            worker.held.clear()
        if conn is not None:
            conn.close()
        if process is None:
            return None
        process.kill()
        return process.wait()


def _child_environment() -> dict[str, str]:
    """The service's environment, with the directory that holds `ocr_service` first on the
    module path, and one thread for numpy's BLAS (a child never needs more)."""
    root = str(Path(__file__).resolve().parents[2])
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(part for part in (root, environment.get("PYTHONPATH")) if part)
    environment["OPENBLAS_NUM_THREADS"] = environment["OMP_NUM_THREADS"] = "1"
    return environment


def _name(media_type: str, index: int | None = None, page_count: int = 1) -> str:
    """How messages name a document or one of its pages: "Page 3 of the PDF", "The PNG image"."""
    document = "the PDF" if media_type == "application/pdf" else f"the {media_type.split('/')[1].upper()} image"
    if index is None or (page_count == 1 and media_type != "application/pdf"):
        return document[0].upper() + document[1:]
    return f"Page {index + 1} of {document}"


def _exit_reason(exitcode: int | None) -> str:
    if exitcode is None:
        return "no exit status"
    if exitcode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-exitcode).name}"
        return f"killed by signal {-exitcode}"
    return f"exit status {exitcode}"
