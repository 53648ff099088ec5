"""Prometheus metrics for one app, in its own registry (tests build many apps; the default registry is global).

Events are counted as they happen (requests, 503s, batches); state the service
already keeps (queue depth, pages in flight, task outcomes, out-of-memory events)
is read at scrape time, so there is one source of truth for each number.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ocr_service.core.service import OcrService
from ocr_service.core.supervisor import Supervisor
from ocr_service.core.tasks import TaskStatus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """The collectors; `batch_formed` and `batch_ran` make it the batcher's observer."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._watching: _ServiceCollector | None = None
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

    def watch(self, service: OcrService, supervisor: Supervisor) -> None:
        """Report the service's state at every scrape, and observe its batches."""
        if self._watching is not None:  # the app started again: forget the old service
            self.registry.unregister(self._watching)
        self._watching = _ServiceCollector(service, supervisor)
        self.registry.register(self._watching)
        service.batcher.observer = self

    def batch_formed(self, size: int, waited: float) -> None:
        self.batch_size.observe(size)
        self.batch_wait.observe(waited)

    def batch_ran(self, size: int, seconds: float) -> None:
        self.engine_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ServiceCollector(Collector):
    def __init__(self, service: OcrService, supervisor: Supervisor) -> None:
        self.service = service
        self.supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        service, batcher = self.service, self.service.batcher
        yield _gauge("ocr_ready", "1 while the service is ready to take work", int(self.supervisor.ready))
        yield _gauge("ocr_queue_depth", "Waiting work: queued pages plus documents still downloading", service.queue.waiting)
        yield _gauge("ocr_queue_limit", "OCR_MAX_QUEUE_SIZE", service.queue.limit)
        yield _gauge("ocr_pages_in_flight", "Pages in the engine now", batcher.in_flight_pages)
        yield _gauge("ocr_batch_cap", "Live batch cap (drops after out-of-memory errors)", batcher.cap)
        counts = service.store.status_counts()
        tasks = GaugeMetricFamily("ocr_tasks", "Tasks held now, by status", labels=["status"])
        outcomes = CounterMetricFamily("ocr_tasks_finished", "Tasks that ended, by outcome", labels=["status"])
        for status in TaskStatus:
            tasks.add_metric([status.value], counts.get(status, 0))
            if status.terminal:
                outcomes.add_metric([status.value], counts.get(status, 0) + service.store.expired_by_status[status])
        yield tasks
        yield outcomes
        yield _counter("ocr_oom_events", "Out-of-memory errors that split a batch", batcher.stats.oom_events)
        yield _counter("ocr_pages_too_large", "Pages that alone did not fit in memory", batcher.stats.pages_too_large)
        yield _counter("ocr_pages_processed", "Pages the engine finished", batcher.stats.pages_run)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)
