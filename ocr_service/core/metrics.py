"""Prometheus metrics for one app, in its own registry (tests build many apps; the default registry is global).

Events are counted as they happen (requests, 503s, batches). State is read at scrape
time from the same `ServiceStatus` that `/stats` returns, so each number has one
source and one name: the metric is `ocr_` + the status field.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ocr_service.core.status import ServiceStatus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

# Status fields exported as they are: (field, kind, help). A counter gains `_total`.
_EXPORTED = (
    ("ready", "gauge", "1 while the service is ready to take work"),
    ("queue_depth", "gauge", "Waiting work: queued pages plus documents still downloading"),
    ("queue_limit", "gauge", "OCR_MAX_QUEUE_SIZE"),
    ("pages_in_flight", "gauge", "Pages in the engine now"),
    ("batch_cap", "gauge", "Live batch cap (drops after out-of-memory errors)"),
    ("oom_events", "counter", "Out-of-memory errors that split a batch"),
    ("pages_too_large", "counter", "Pages that alone did not fit in memory"),
    ("pages_processed", "counter", "Pages the engine finished"),
    ("documents_kept_bytes", "gauge", "Encoded bytes of ended tasks' documents kept for page images"),
    ("documents_evicted", "counter", "Documents dropped to stay within OCR_KEEP_DOCUMENTS_MB"),
)


class Metrics:
    """The collectors; `batch_formed` and `batch_ran` make it the batcher's observer."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._watching: _StatusCollector | None = None
        r = self.registry
        self.requests = Counter(
            "ocr_http_requests", "HTTP requests by route template, method and status", ["route", "method", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "ocr_http_request_duration_seconds", "Time to answer an HTTP request", ["route", "method"],
            buckets=SECONDS_BUCKETS, registry=r,
        )
        self.rejections = Counter(
            "ocr_rejections", "Submissions refused with 503 (queue full, shutting down, batcher dead)", ["reason"], registry=r
        )
        self.batch_size = Histogram("ocr_batch_size_pages", "Pages per engine batch", buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.batch_wait = Histogram(
            "ocr_batch_wait_seconds", "How long a batch's first page waited before the batch went to the engine",
            buckets=SECONDS_BUCKETS, registry=r,
        )
        self.engine_seconds = Histogram(
            "ocr_engine_batch_seconds", "Engine time per batch", buckets=SECONDS_BUCKETS, registry=r
        )

    def watch(self, status: Callable[[], ServiceStatus]) -> None:
        """Export the service's status at every scrape."""
        if self._watching is not None:  # the app started again: forget the old service
            self.registry.unregister(self._watching)
        self._watching = _StatusCollector(status)
        self.registry.register(self._watching)

    def batch_formed(self, size: int, waited: float) -> None:
        self.batch_size.observe(size)
        self.batch_wait.observe(waited)

    def batch_ran(self, size: int, seconds: float) -> None:
        self.engine_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StatusCollector(Collector):
    def __init__(self, status: Callable[[], ServiceStatus]) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        status = self.status()
        values = status.model_dump()
        for field, kind, documentation in _EXPORTED:
            family = GaugeMetricFamily if kind == "gauge" else CounterMetricFamily
            yield family(f"ocr_{field}", documentation, value=float(values[field]))
        held = GaugeMetricFamily("ocr_tasks", "Tasks held now, by status", labels=["status"])
        for name in ("pending", "processing", "completed", "failed", "cancelled"):
            held.add_metric([name], values[name])
        yield held
        finished = CounterMetricFamily("ocr_tasks_finished", "Tasks that ended, by outcome", labels=["status"])
        for name, count in status.tasks_finished.items():
            finished.add_metric([name], count)
        yield finished
        if status.workers is not None:
            restarts = CounterMetricFamily("ocr_worker_restarts", "Engine worker restarts", labels=["worker", "device"])
            ready = GaugeMetricFamily("ocr_worker_ready", "1 while the engine worker is ready", labels=["worker", "device"])
            for worker in status.workers:
                restarts.add_metric([str(worker.id), worker.device], worker.restarts)
                ready.add_metric([str(worker.id), worker.device], int(worker.state == "ready"))
            yield restarts
            yield ready
        if status.replicas is not None:
            up = GaugeMetricFamily("ocr_replica_up", "1 while the vllm serve replica takes pages", labels=["url"])
            in_flight = GaugeMetricFamily("ocr_replica_pages_in_flight", "Pages on the replica now", labels=["url"])
            done = CounterMetricFamily("ocr_replica_pages_done", "Pages the replica answered", labels=["url"])
            errors = CounterMetricFamily("ocr_replica_errors", "Pages the replica failed to answer", labels=["url"])
            for replica in status.replicas:
                up.add_metric([replica.url], int(replica.state == "up"))
                in_flight.add_metric([replica.url], replica.pages_in_flight)
                done.add_metric([replica.url], replica.pages_done)
                errors.add_metric([replica.url], replica.errors)
            yield from (up, in_flight, done, errors)
