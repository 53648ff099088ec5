"""The application factory: the lifespan builds every long-lived object and wires them.

`create_app(settings, engine=None)` lets tests and benchmarks build an app around any
engine; `run_service.py` builds one from the environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ocr_service import __version__
from ocr_service.api import ops
from ocr_service.api.limits import BodyLimitMiddleware
from ocr_service.api.middleware import RequestObserver
from ocr_service.api.ratelimit import RateLimitMiddleware
from ocr_service.api.routes import MULTIPART_OVERHEAD, router
from ocr_service.api.security import ApiKeys
from ocr_service.config import Settings
from ocr_service.core.batcher import Batcher
from ocr_service.core.metrics import Metrics
from ocr_service.core.queue import PageQueue, QueueFull
from ocr_service.core.service import OcrService, ServiceConfig
from ocr_service.core.store import TaskStore
from ocr_service.core.supervisor import State, Supervisor
from ocr_service.core.tasks import OcrParams
from ocr_service.documents import DocumentLimits
from ocr_service.documents.fetch import FetchPolicy, UrlFetcher
from ocr_service.engines.base import Engine
from ocr_service.engines.registry import build_engine

logger = logging.getLogger(__name__)


def create_app(settings: Settings, engine: Engine | None = None) -> FastAPI:
    """Build the app. With `engine` given it is used as is (and loaded at start)."""
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        the_engine = engine if engine is not None else build_engine(settings)
        logger.info("loading engine %s", the_engine.name)
        await asyncio.to_thread(the_engine.load)
        store = TaskStore(ttl=settings.task_ttl)
        queue = PageQueue(limit=settings.max_queue_size)
        batcher = Batcher(
            queue,
            the_engine,
            batch_size=settings.batch_size,
            timeout=settings.batch_timeout,
            policy=settings.batch_policy,
        )
        fetcher = UrlFetcher(
            FetchPolicy(
                max_bytes=settings.max_upload_bytes,
                timeout=settings.image_download_timeout,
                allow_private=settings.allow_private_urls,
                max_redirects=settings.max_redirects,
                allowed_hosts=settings.url_allowed_host_set,
            )
        )
        service = OcrService(store, queue, batcher, fetcher, document_limits(settings), service_config(settings, the_engine))
        supervisor = Supervisor(service)
        metrics.watch(service, supervisor)
        app.state.service = service
        supervisor.start()
        app.state.supervisor = supervisor
        cleanup = asyncio.create_task(store.run_cleanup(settings.cleanup_interval), name="task-cleanup")
        logger.info("serving with engine %s, batch size %d, policy %s", the_engine.name, settings.batch_size, settings.batch_policy)
        try:
            yield
        finally:
            await supervisor.shutdown(settings.shutdown_grace)  # at once if a SIGTERM drain already ran
            cleanup.cancel()
            await asyncio.gather(cleanup, return_exceptions=True)
            await service.aclose()
            await fetcher.aclose()
            await asyncio.to_thread(the_engine.close)

    app = FastAPI(
        title="DeepSeek-OCR service",
        version=__version__,
        description="Images and PDFs in, Markdown with layout boxes out, through a bounded queue and a micro-batcher.",
        lifespan=lifespan,
    )
    api_keys = ApiKeys(settings.api_key_list)
    app.state.api_keys = api_keys
    app.state.metrics = metrics
    app.include_router(ops.router)
    app.include_router(router)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_upload_bytes + MULTIPART_OVERHEAD,
        limit_text=f"OCR_MAX_IMAGE_SIZE_MB={settings.max_image_size_mb:g}",
    )
    if settings.rate_limit:
        app.add_middleware(RateLimitMiddleware, rate=settings.rate_limit, api_keys=api_keys)
    app.add_middleware(RequestObserver, metrics=metrics)  # outermost: sees every answer, 413 and 429 too

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, exc: QueueFull) -> JSONResponse:
        metrics.rejections.labels(_rejection_reason(request)).inc()
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": str(exc.retry_after)})

    return app


async def drain(app: FastAPI, grace: float) -> None:
    """Stop taking work and let running batches finish (run_service.py calls it on SIGTERM,
    while the server still answers polls); the lifespan's end then finds nothing to do."""
    supervisor: Supervisor | None = getattr(app.state, "supervisor", None)
    if supervisor is not None:
        await supervisor.shutdown(grace)


def _rejection_reason(request: Request) -> str:
    supervisor: Supervisor | None = getattr(request.app.state, "supervisor", None)
    if supervisor is None or supervisor.state is State.READY:
        return "queue_full"
    return "batcher_failed" if supervisor.state is State.FAILED else "shutting_down"


def document_limits(settings: Settings) -> DocumentLimits:
    return DocumentLimits(
        max_pixels=settings.max_image_pixels,
        max_pdf_pages=settings.max_pdf_pages,
        pdf_dpi=settings.pdf_dpi,
    )


def service_config(settings: Settings, engine: Engine) -> ServiceConfig:
    return ServiceConfig(
        engine=engine.name,
        batch_size=settings.batch_size,
        batch_policy=settings.batch_policy,
        batch_timeout=settings.batch_timeout,
        defaults=OcrParams(settings.default_prompt, settings.default_temperature, settings.default_max_tokens),
        max_upload_bytes=settings.max_upload_bytes,
        max_batch_urls=settings.max_batch_urls,
        sync_timeout=settings.sync_timeout,
    )
