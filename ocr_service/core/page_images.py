"""Page images and figure crops of a task, drawn on demand and cached as encoded bytes.

A page is decoded from the task's document with `load_page`, the same decode the
engine used, so the blocks' pixel boxes line up with the image. Decoding and encoding
run in worker threads, at most `RENDERS_AT_ONCE` at a time (a page can be tens of
megapixels; PDF pages also share pdfium's process-wide lock with the batcher), and
concurrent requests for the same image share one render. Encoded results are kept in
a least-recently-used cache bounded in bytes; decoded pages are never kept.

The document comes from the task while it runs, and from the `DocumentKeeper` after
it ended; once the keeper has let it go, the images are gone (`ImageGone`).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable

from ocr_service.core.keeper import MB, DocumentKeeper
from ocr_service.core.tasks import Task
from ocr_service.documents import Document
from ocr_service.output.page_images import EncodedImage, crop_block, encode_page

RENDERS_AT_ONCE = 2
CACHE_BYTES = 32 * MB

ImageKey = tuple[str, int, int]  # task id, page number, image number (0 = the whole page)


class PageNotFound(LookupError):
    """No such page (or figure) in this task; the message says which."""


class ImageGone(Exception):
    """The page exists but its document is no longer kept; the message says which setting to raise."""


class PageImages:
    def __init__(self, keeper: DocumentKeeper, *, cache_bytes: int = CACHE_BYTES, renders_at_once: int = RENDERS_AT_ONCE) -> None:
        self.keeper = keeper
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[ImageKey, EncodedImage] = OrderedDict()
        self._cached_bytes = 0
        self._renders = asyncio.Semaphore(renders_at_once)
        self._pending: dict[ImageKey, asyncio.Future[EncodedImage]] = {}

    async def page(self, task: Task, number: int) -> EncodedImage:
        """Page `number` (1-based) as the engine saw it."""
        index = self._index(task, number)
        document = self._document(task)
        return await self._get((task.id, number, 0), lambda: encode_page(document.load_page(index)))

    async def figure(self, task: Task, number: int, image: int) -> EncodedImage:
        """The `image`-th (1-based) image region of page `number`: `images/page-{number}-{image}.png`."""
        index = self._index(task, number)
        result = task.pages[index]
        if result is None:
            raise PageNotFound(f"page {number} of task {task.id} has no result yet, so no image regions")
        boxes = [block.bbox for block in result.blocks if block.label == "image"]
        if not 1 <= image <= len(boxes):
            raise PageNotFound(f"page {number} of task {task.id} has {len(boxes)} image region(s); there is no image {image}")
        document = self._document(task)
        bbox = boxes[image - 1]
        return await self._get((task.id, number, image), lambda: crop_block(document.load_page(index), bbox))

    @property
    def cached_bytes(self) -> int:
        return self._cached_bytes

    def _index(self, task: Task, number: int) -> int:
        if not 1 <= number <= len(task.pages):
            raise PageNotFound(f"task {task.id} has {len(task.pages)} page(s); there is no page {number}")
        return number - 1

    def _document(self, task: Task) -> Document:
        document = task.document or self.keeper.get(task.id)
        if document is None:
            raise ImageGone(f"the page images of task {task.id} are gone: {self.keeper.why_gone()}")
        return document

    async def _get(self, key: ImageKey, render: Callable[[], EncodedImage]) -> EncodedImage:
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._render(key, render))
            self._pending[key] = pending
            pending.add_done_callback(lambda done: self._settled(key, done))
        # Shielded: a client that goes away does not cancel a render others wait for.
        return await asyncio.shield(pending)

    async def _render(self, key: ImageKey, render: Callable[[], EncodedImage]) -> EncodedImage:
        async with self._renders:
            encoded = await asyncio.to_thread(render)
        self._remember(key, encoded)
        return encoded

    def _settled(self, key: ImageKey, done: asyncio.Future[EncodedImage]) -> None:
        self._pending.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved here: every waiter may have gone

    def _remember(self, key: ImageKey, encoded: EncodedImage) -> None:
        size = len(encoded.data)
        if size > self.cache_bytes or key in self._cache:
            return
        self._cache[key] = encoded
        self._cached_bytes += size
        while self._cached_bytes > self.cache_bytes:
            _, oldest = self._cache.popitem(last=False)
            self._cached_bytes -= len(oldest.data)
