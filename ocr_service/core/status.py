"""One snapshot of the service's state: `/stats` returns it, `/metrics` exports it.

Both read the same numbers under the same names (a metric is `ocr_` + the field, with
`_total` for counters), from counters kept as things happen, so neither scans the
task store.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, Field

from ocr_service.core.batcher import Batcher
from ocr_service.core.ledger import WorkLedger
from ocr_service.core.supervisor import Supervisor
from ocr_service.core.tasks import TaskStatus
from ocr_service.engines.base import Engine
from ocr_service.engines.remote import RemoteEngine
from ocr_service.engines.workers import WorkerPool


class WorkerView(BaseModel):
    id: int
    pid: int | None
    device: str = Field(description="CUDA_VISIBLE_DEVICES of the worker; empty when not pinned")
    state: str = Field(description="starting, ready, restarting or stopped")
    pages_in_flight: int
    restarts: int


class ReplicaView(BaseModel):
    url: str = Field(description="The vllm serve replica's base URL")
    state: str = Field(description="up or down")
    pages_in_flight: int
    pages_done: int = Field(description="Pages it answered with text")
    errors: int = Field(description="Pages it failed to answer (no answer, timeout, 5xx)")
    last_error: str | None


class ServiceStatus(BaseModel):
    total: int = Field(description="Tasks held now (waiting, running and finished within OCR_TASK_TTL)")
    pending: int
    processing: int
    completed: int
    failed: int
    cancelled: int
    tasks_finished: dict[str, int] = Field(description="Tasks that ever ended, by outcome (expired ones too)")
    queue_limit: int = Field(description="OCR_MAX_QUEUE_SIZE")
    queue_depth: int = Field(description="Waiting work: queued pages plus documents still downloading")
    pages_queued: int
    pages_in_flight: int = Field(description="Pages in the engine now")
    engine: str
    ready: bool
    batch_size: int = Field(description="OCR_BATCH_SIZE")
    batch_cap: int = Field(description="Live batch cap (drops after out-of-memory errors)")
    batch_policy: str
    batch_timeout: float
    batches_run: int
    pages_processed: int = Field(description="Pages the engine finished")
    mean_batch_size: float
    last_batch_size: int
    throughput_pages_per_s: float | None = Field(description="Measured pages per second (None before the first batch)")
    engine_busy_s: float
    oom_events: int = Field(description="Out-of-memory errors that split a batch")
    pages_too_large: int = Field(description="Pages that alone did not fit in memory")
    expired_total: int = Field(description="Finished tasks dropped after OCR_TASK_TTL")
    documents_kept: int = Field(description="Ended tasks' documents kept for page images (OCR_KEEP_DOCUMENTS_MB)")
    documents_kept_bytes: int = Field(description="Their encoded size, at most OCR_KEEP_DOCUMENTS_MB")
    documents_evicted: int = Field(description="Documents dropped (oldest first) to stay within OCR_KEEP_DOCUMENTS_MB")
    uptime_s: float
    workers: list[WorkerView] | None = Field(None, description="The engine's worker processes, where it runs in them")
    replicas: list[ReplicaView] | None = Field(None, description="The vllm serve replicas of OCR_ENGINE=remote")




def snapshot(ledger: WorkLedger, batcher: Batcher, supervisor: Supervisor) -> ServiceStatus:
    kept = ledger.keeper.stats()
    counts = ledger.counts
    stats = batcher.stats
    throughput = ledger.throughput.pages_per_second
    return ServiceStatus(
        total=ledger.total,
        pending=counts[TaskStatus.PENDING],
        processing=counts[TaskStatus.PROCESSING],
        completed=counts[TaskStatus.COMPLETED],
        failed=counts[TaskStatus.FAILED],
        cancelled=counts[TaskStatus.CANCELLED],
        tasks_finished={status.value: ledger.ended[status] for status in TaskStatus if status.terminal},
        queue_limit=ledger.limit,
        queue_depth=ledger.waiting,
        pages_queued=len(ledger.queue),
        pages_in_flight=ledger.pages_in_flight,
        engine=batcher.engine.name,
        ready=supervisor.ready,
        batch_size=batcher.cap.limit,
        batch_cap=batcher.cap.value,
        batch_policy=batcher.policy,
        batch_timeout=batcher.timeout,
        batches_run=stats.batches_run,
        pages_processed=stats.pages_processed,
        mean_batch_size=round(stats.mean_batch_size, 3),
        last_batch_size=stats.last_batch_size,
        throughput_pages_per_s=None if throughput is None else round(throughput, 3),
        engine_busy_s=round(stats.engine_seconds, 3),
        oom_events=stats.oom_events,
        pages_too_large=stats.pages_too_large,
        expired_total=ledger.expired,
        documents_kept=kept.documents,
        documents_kept_bytes=kept.bytes,
        documents_evicted=kept.evicted,
        uptime_s=round(time.time() - supervisor.started_at, 1),
        workers=_workers(batcher.engine),
        replicas=_replicas(batcher.engine),
    )


def _workers(engine: Engine) -> list[WorkerView] | None:
    if not isinstance(engine, WorkerPool):
        return None
    return [WorkerView(**vars(worker)) for worker in engine.workers()]


def _replicas(engine: Engine) -> list[ReplicaView] | None:
    if not isinstance(engine, RemoteEngine):
        return None
    return [ReplicaView(**vars(replica)) for replica in engine.replica_states()]
