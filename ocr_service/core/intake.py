"""Intake: uploads and URLs become tasks in the ledger.

An upload is opened off the event loop (format, page count, pixel bombs) before it is
admitted, so a bad file is refused without a trace. A URL is admitted at once, holding
one place in the queue, and fetched in the background; a bad URL fails its task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from ocr_service.core.ledger import WorkLedger
from ocr_service.core.tasks import BatchJob, OcrParams, Task
from ocr_service.deepseek import with_image_tag
from ocr_service.documents import DecoderPool, DocumentError, DocumentLimits, open_document
from ocr_service.documents.fetch import FetchError, UrlFetcher, check_url_syntax

logger = logging.getLogger(__name__)

MAX_CONCURRENT_DOWNLOADS = 16


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


class Intake:
    def __init__(self, ledger: WorkLedger, fetcher: UrlFetcher, limits: DocumentLimits, decoder: DecoderPool) -> None:
        self.ledger = ledger
        self.fetcher = fetcher
        self.limits = limits
        self.decoder = decoder  # opens documents and draws their pages in child processes
        self._downloads: dict[str, asyncio.Task[None]] = {}  # by task id
        self._download_slots = asyncio.Semaphore(MAX_CONCURRENT_DOWNLOADS)

    async def submit_upload(self, data: bytes, params: OcrParams, owner: str | None = None) -> Task:
        """Admit an uploaded document; DocumentError for a bad one, QueueFull when full."""
        self.ledger.check_room()  # before the work of opening it
        document = await asyncio.to_thread(open_document, data, self.limits, self.decoder)
        task = Task(params, owner=owner)
        await self.ledger.admit_document(task, document)
        return task

    async def submit_url(self, url: str, params: OcrParams, owner: str | None = None) -> Task:
        """Admit a URL: it is fetched in the background; a bad URL fails the task."""
        check_url_syntax(url)
        task = Task(params, url=url, owner=owner)
        await self.ledger.admit_pending([task])
        self._start_download(task)
        return task

    async def submit_url_batch(self, urls: Sequence[str], params: OcrParams, owner: str | None = None) -> BatchJob:
        """Admit a whole URL batch (it may push the queue past its limit); each URL stands alone."""
        batch = BatchJob([Task(params, url=url, owner=owner) for url in urls], owner=owner)
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
        try:
            async with self._download_slots:
                data = await self.fetcher.fetch(task.url or "")
            document = await asyncio.to_thread(open_document, data, self.limits, self.decoder)
            self.ledger.document_arrived(task, document)
        except (FetchError, DocumentError) as exc:
            self.ledger.fail(task, f"{task.url}: {exc}")
        except Exception as exc:
            logger.exception("download of %s failed", task.url)
            self.ledger.fail(task, f"{task.url}: could not fetch the document ({type(exc).__name__})")

    async def aclose(self) -> None:
        downloads = list(self._downloads.values())
        for download in downloads:
            download.cancel()
        await asyncio.gather(*downloads, return_exceptions=True)
