"""The document keeper: encoded documents of ended tasks, kept for their page images.

A running task holds its document; when it ends the ledger hands the document here,
so its pages can still be drawn (`GET /ocr/{id}/pages/{n}/image`) while the task is
kept. Only the encoded bytes are kept (what the client sent: a PDF, a JPEG), never
decoded pages, within one byte budget for the whole process (`OCR_KEEP_DOCUMENTS_MB`):
past it the documents that ended first go first. A task's document also goes when
the task expires (`OCR_TASK_TTL`), whichever comes first. A budget of 0 keeps none.

It is touched only from the event loop (the ledger's ends and expiry, the routes'
reads), so it needs no lock; the documents themselves decode safely from any thread.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from ocr_service.documents import Document

MB = 1024 * 1024


@dataclass(frozen=True)
class KeeperStats:
    documents: int
    bytes: int
    budget_bytes: int
    evicted: int  # documents dropped to stay within the budget (or too big for it), ever


class DocumentKeeper:
    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = max(0, budget_bytes)
        self._documents: OrderedDict[str, Document] = OrderedDict()  # by task id, oldest end first
        self._bytes = 0
        self._evicted = 0

    def keep(self, task_id: str, document: Document) -> None:
        """Keep `document` for `task_id`, dropping the oldest kept documents to make room.
        A document larger than the whole budget is not kept."""
        self.drop(task_id)
        if document.nbytes > self.budget_bytes:
            self._evicted += 1
            return
        self._documents[task_id] = document
        self._bytes += document.nbytes
        while self._bytes > self.budget_bytes:
            _, oldest = self._documents.popitem(last=False)
            self._bytes -= oldest.nbytes
            self._evicted += 1

    def get(self, task_id: str) -> Document | None:
        return self._documents.get(task_id)

    def drop(self, task_id: str) -> None:
        """Forget a task's document (the task expired)."""
        document = self._documents.pop(task_id, None)
        if document is not None:
            self._bytes -= document.nbytes

    def stats(self) -> KeeperStats:
        return KeeperStats(len(self._documents), self._bytes, self.budget_bytes, self._evicted)

    def why_gone(self) -> str:
        """Why a finished task's pages cannot be drawn any more, and which setting to raise."""
        if self.budget_bytes == 0:
            return "documents are not kept after a task ends (OCR_KEEP_DOCUMENTS_MB=0); raise OCR_KEEP_DOCUMENTS_MB to keep them"
        return (
            "its document is no longer kept: finished tasks' documents share "
            f"OCR_KEEP_DOCUMENTS_MB={self.budget_bytes / MB:g} and the oldest go first; "
            "raise OCR_KEEP_DOCUMENTS_MB to keep more"
        )
