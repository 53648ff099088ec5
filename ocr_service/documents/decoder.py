"""The decoding child process: opens documents and draws pages on request, inside its budgets.

`serve` is the whole life of one child of the `DecoderPool` (`sandbox.py`), started as
`python -c` with `main`. It caps its own address space (`RLIMIT_AS`, so a page that needs
too much memory fails with `MemoryError` or takes the child down, never the service), says
`Ready`, then answers requests on its socket one at a time until the socket closes. Before
each request it also caps its CPU time to a little more than the call's time budget: the
pool kills an overrunning child itself, and this limit stops one whose service died
mid-render (an orphan would otherwise draw on for minutes).

The child keeps the documents it was sent in a small LRU cache bounded in bytes, so the
pages of one document cost one copy of its bytes, not one per page. The pool mirrors the
cache (`Lru`, same rule, same sequence of calls) to know when it must send the bytes again;
a child that misses anyway answers `Missing` and gets them.

The messages on the socket are the small dataclasses below. Bulk bytes never go through
pickle: a document's bytes follow an `Open` or `Page` request, and a page's RGB pixels
follow a `Pixels` reply, each as one `send_bytes` message.
"""

from __future__ import annotations

import math
import resource
import signal
import sys
import traceback
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Generic, TypeVar

from ocr_service.documents.document import DocumentError, DocumentLimits
from ocr_service.documents.images import ImageDocument
from ocr_service.documents.pdf import PdfDocument

# -- messages --------------------------------------------------------------------------


@dataclass(frozen=True)
class Open:
    """Validate a document and count its pages; its bytes follow."""

    doc_id: str
    media_type: str
    limits: DocumentLimits


@dataclass(frozen=True)
class Page:
    """Draw one page of an opened document; its bytes follow when `with_data`."""

    doc_id: str
    media_type: str
    page_count: int
    limits: DocumentLimits
    index: int
    with_data: bool


@dataclass(frozen=True)
class Ready:
    """A new child's first message: its imports are done and its budget is set."""


@dataclass(frozen=True)
class Opened:
    page_count: int


@dataclass(frozen=True)
class Pixels:
    """A drawn page: `stride * height` bytes of RGB rows follow."""

    width: int
    height: int
    stride: int


@dataclass(frozen=True)
class Failed:
    """The document or page is bad; the message is for the user."""

    message: str


@dataclass(frozen=True)
class OutOfMemory:
    """The call needed more memory than the child's budget."""


@dataclass(frozen=True)
class Missing:
    """The page's document is not in this child's cache: send its bytes."""


Reply = Ready | Opened | Pixels | Failed | OutOfMemory | Missing

# -- the cache -----------------------------------------------------------------------------

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Lru(Generic[K, V]):
    """Least recently used entries, at most `budget` bytes in all (an entry over it is not kept)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._size = 0

    def __contains__(self, key: K) -> bool:
        return key in self._entries

    def get(self, key: K) -> V | None:
        """The entry, now the most recently used; None if absent."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: K, value: V, size: int) -> None:
        if key in self._entries:
            self._size -= self._entries.pop(key)[1]
        if size > self.budget:
            return
        while self._size + size > self.budget:
            _, (_, dropped) = self._entries.popitem(last=False)
            self._size -= dropped
        self._entries[key] = (value, size)
        self._size += size

    def clear(self) -> None:
        self._entries.clear()
        self._size = 0


# -- the child ----------------------------------------------------------------------------

Opening = ImageDocument | PdfDocument


def main() -> None:
    """A child's entry point (`python -c`); argv: the socket's fd, memory and cache bytes, timeout."""
    fd, memory_bytes, cache_bytes, timeout = sys.argv[1:5]
    serve(Connection(int(fd)), int(memory_bytes), int(cache_bytes), float(timeout))


def serve(conn: Connection, memory_bytes: int, cache_bytes: int, timeout: float) -> None:
    """Answer requests on `conn` until it closes."""
    # The pool owns this process's life: Ctrl+C in a terminal, or a SIGTERM that a supervisor
    # sends to every process of the service, must not cut a page short while the service
    # drains. The pool kills the child itself (SIGKILL); an orphan ends at EOF or its CPU limit.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash or SIGXCPU writes no core file
    cache: Lru[str, Opening] = Lru(cache_bytes)
    try:
        conn.send(Ready())
    except OSError:
        return
    while True:
        try:
            request = conn.recv()
            data = conn.recv_bytes() if isinstance(request, Open) or request.with_data else None
        except (EOFError, OSError):
            return  # the pool closed the socket, or the service is gone
        _limit_cpu(timeout)
        reply: Reply
        pixels: bytes | bytearray | None = None
        try:
            if isinstance(request, Open):
                reply = _open(request, data, cache)
            else:
                reply, pixels = _draw(request, data, cache)
        except DocumentError as exc:
            reply = Failed(str(exc))
        except MemoryError:
            reply, pixels = OutOfMemory(), None
        except Exception as exc:  # noqa: BLE001 - a decoder bug fails this call, not the child
            traceback.print_exc()  # to the service's log (the child shares its stderr)
            reply, pixels = Failed(f"The document could not be decoded ({type(exc).__name__}: {str(exc)[:200]})."), None
        try:
            conn.send(reply)
            if pixels is not None:
                conn.send_bytes(pixels)
        except (EOFError, OSError):
            return


def _open(request: Open, data: bytes | None, cache: Lru[str, Opening]) -> Opened:
    assert data is not None
    document: Opening
    if request.media_type == "application/pdf":
        document = PdfDocument.open(data, request.limits)
    else:
        document = ImageDocument.open(data, request.media_type, request.limits)
    cache.put(request.doc_id, document, len(data))
    return Opened(document.page_count)


def _draw(request: Page, data: bytes | None, cache: Lru[str, Opening]) -> tuple[Reply, bytes | bytearray | None]:
    document = cache.get(request.doc_id)
    if document is None:
        if data is None:
            return Missing(), None
        document = _reopen(request, data)
        cache.put(request.doc_id, document, len(data))
    raster = document.draw(request.index)
    return Pixels(raster.width, raster.height, raster.stride), raster.data


def _reopen(request: Page, data: bytes) -> Opening:
    """The document as opened before, without validating it again."""
    limits = request.limits
    if request.media_type == "application/pdf":
        return PdfDocument(data, request.page_count, limits.pdf_dpi, limits.pdf_raster_pixels)
    return ImageDocument(data, request.media_type, request.page_count, limits.max_pixels)


def _limit_cpu(timeout: float) -> None:
    """Let this request use at most `timeout` + 5 s of CPU from now (SIGXCPU ends the process)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = usage.ru_utime + usage.ru_stime
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = math.ceil(used + timeout) + 5
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
