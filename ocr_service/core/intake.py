"""Intake: uploads and URLs become tasks in the ledger.

An upload is opened off the event loop (format, page count, pixel bombs) before it is
admitted, so a bad file is refused without a trace. A URL is admitted at once, holding
one place in the queue, and fetched in the background; a bad URL fails its task.

Downloads share `MAX_DOWNLOADS` slots fairly: one client, and one host, may use at most
`MAX_DOWNLOADS_PER_KEY` of them, so one client's stalling URLs (or one slow host) cannot
hold up everyone else's for the download timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from ocr_service.core.ledger import WorkLedger
from ocr_service.core.tasks import BatchJob, Caller, OcrParams, Task
from ocr_service.deepseek import with_image_tag
from ocr_service.documents import DecoderPool, DocumentError, DocumentLimits, open_document
from ocr_service.documents.fetch import FetchError, UrlFetcher, check_url_syntax

logger = logging.getLogger(__name__)

MAX_DOWNLOADS = 16
MAX_DOWNLOADS_PER_KEY = 4  # per client, and per host


@dataclass(frozen=True)
class Defaults:
    """OCR parameters used where a request leaves one out."""

    prompt: str
    temperature: float
    max_tokens: int

    def params(self, prompt: str | None, temperature: float | None, max_tokens: int | None) -> OcrParams:
        return OcrParams(
            prompt=normalize_prompt(prompt or self.prompt),
            temperature=self.temperature if temperature is None else temperature,
            max_tokens=self.max_tokens if max_tokens is None else max_tokens,
        )


def normalize_prompt(prompt: str) -> str:
    """DeepSeek prompts start with the image placeholder; add it where a client left it out."""
    prompt = prompt.replace("\\n", "\n")  # curl -F sends a typed "\n" literally
    return with_image_tag(prompt)


class KeyedSlots:
    """At most `per_key` holders per key: a semaphore per key, kept only while in use."""

    def __init__(self, per_key: int) -> None:
        self.per_key = per_key
        self._slots: dict[str, tuple[asyncio.Semaphore, int]] = {}  # key -> (slots, users)

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        slots, users = self._slots.get(key, (asyncio.Semaphore(self.per_key), 0))
        self._slots[key] = (slots, users + 1)
        try:
            async with slots:
                yield
        finally:
            slots, users = self._slots[key]
            if users == 1:
                del self._slots[key]
            else:
                self._slots[key] = (slots, users - 1)


class Intake:
    def __init__(self, ledger: WorkLedger, fetcher: UrlFetcher, limits: DocumentLimits, decoder: DecoderPool) -> None:
        self.ledger = ledger
        self.fetcher = fetcher
        self.limits = limits
        self.decoder = decoder  # opens documents and draws their pages in child processes
        self._downloads: dict[str, asyncio.Task[None]] = {}  # by task id
        self._download_slots = asyncio.Semaphore(MAX_DOWNLOADS)
        self._per_client = KeyedSlots(MAX_DOWNLOADS_PER_KEY)
        self._per_host = KeyedSlots(MAX_DOWNLOADS_PER_KEY)

    async def submit_upload(
        self, data: bytes, params: OcrParams, caller: Caller, pages: Sequence[int] | None = None
    ) -> Task:
        """Admit an uploaded document (only `pages`, 0-based, where given); DocumentError for a
        bad one or a page it lacks, QueueFull when full."""
        self.ledger.check_room(caller.client)  # before the work of opening it
        document = await asyncio.to_thread(open_document, data, self.limits, self.decoder)
        selection = None if pages is None else sorted(set(pages))
        if selection is not None and (not selection or selection[-1] >= document.page_count):
            raise DocumentError(f"the pages to read must be among 0 to {document.page_count - 1}")
        task = Task(params, owner=caller.owner, client=caller.client, page_selection=selection)
        await self.ledger.admit_document(task, document, data)
        return task

    async def submit_url(self, url: str, params: OcrParams, caller: Caller) -> Task:
        """Admit a URL: it is fetched in the background; a bad URL fails the task."""
        check_url_syntax(url)
        task = Task(params, url=url, owner=caller.owner, client=caller.client)
        await self.ledger.admit_pending([task])
        self._start_download(task)
        return task

    async def submit_url_batch(
        self,
        urls: Sequence[str],
        params: OcrParams,
        caller: Caller,
        required_kinds: Sequence[str | None] | None = None,
    ) -> BatchJob:
        """Admit a whole URL batch (it may push the queue past its limit); each URL stands alone.
        `required_kinds` ("pdf" or None per URL) fails an item whose document is of another kind."""
        kinds = required_kinds or [None] * len(urls)
        tasks = [
            Task(params, url=url, owner=caller.owner, client=caller.client, required_kind=kind)
            for url, kind in zip(urls, kinds, strict=True)
        ]
        batch = BatchJob(tasks, owner=caller.owner)
        for task in batch.tasks:
            task.batch_id = batch.id
        await self.ledger.admit_pending(batch.tasks, batch)
        for task in batch.tasks:
            try:
                check_url_syntax(task.url or "")
            except FetchError as exc:
                self.ledger.fail(task, str(exc))
                continue
            self._start_download(task)
        return batch

    async def fetch(self, url: str, client: str) -> bytes:
        """Download a URL now (a synchronous API waits on it), within the same fair shares
        as the background downloads. FetchError says what was wrong."""
        check_url_syntax(url)
        async with (
            self._per_client.hold(client),
            self._per_host.hold(urlsplit(url).hostname or ""),
            self._download_slots,
        ):
            return await self.fetcher.fetch(url)

    def _start_download(self, task: Task) -> None:
        download = asyncio.create_task(self._download(task), name=f"download-{task.id}")
        self._downloads[task.id] = download
        download.add_done_callback(lambda _: self._downloads.pop(task.id, None))
        self.ledger.on_end(task, lambda: self._stop_download(download))

    @staticmethod
    def _stop_download(download: asyncio.Task[None]) -> None:
        if download is not asyncio.current_task():  # a download that fails its own task just ends
            download.cancel()

    async def _download(self, task: Task) -> None:
        url = task.url or ""
        try:
            data = await self.fetch(url, task.client)
            document = await asyncio.to_thread(open_document, data, self.limits, self.decoder)
            if task.required_kind is not None and document.kind != task.required_kind:
                self.ledger.fail(task, f"Provided file is not a {task.required_kind.upper()}: {url}")
                return
            await self.ledger.document_arrived(task, document, data)
        except (FetchError, DocumentError) as exc:
            self.ledger.fail(task, f"{task.url}: {exc}")
        except Exception as exc:
            logger.exception("download of %s failed", task.url)
            self.ledger.fail(task, f"{task.url}: could not fetch the document ({type(exc).__name__})")

    async def resume(self, work: Sequence[tuple[Task, bytes | None]]) -> None:
        """Take back the work the service had not finished when it stopped (a store that keeps
        it: SQLite, Redis). Kept bytes are opened again; a URL whose bytes were not kept yet
        is fetched again; an upload whose bytes are lost fails, saying so."""
        for task, data in work:
            if data is not None:
                try:
                    document = await asyncio.to_thread(open_document, data, self.limits, self.decoder)
                except DocumentError as exc:
                    self.ledger.resume(task, None)
                    self.ledger.fail(task, f"its document could not be opened again after a restart: {exc}")
                    continue
                self.ledger.resume(task, document)
            elif task.url:
                self.ledger.resume(task, None)
                self._start_download(task)
            else:
                self.ledger.resume(task, None)
                self.ledger.fail(task, "the service restarted before this upload's bytes were kept; submit it again")

    async def aclose(self) -> None:
        downloads = list(self._downloads.values())
        for download in downloads:
            download.cancel()
        await asyncio.gather(*downloads, return_exceptions=True)
