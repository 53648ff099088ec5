"""The application factory: the lifespan builds every long-lived object and wires them.

The flow it wires, in order: routes -> `Intake` (documents, downloads) -> `WorkLedger`
(admission, the task store, the page queue) -> `Batcher` -> engine -> back to the ledger
(pages, Markdown, ends). `create_app(settings, engine=None)` lets tests and benchmarks
build an app around any engine; `run_service.py` builds one from the environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator

from fastapi import FastAPI

from ocr_service import __version__
from ocr_service.api import docs, events, mistral, ops, page_images, ui
from ocr_service.api.errors import add_error_handlers
from ocr_service.api.limits import AdmissionGate, BodyLimitMiddleware
from ocr_service.api.middleware import RequestObserver
from ocr_service.api.ratelimit import RateLimitMiddleware
from ocr_service.api.routes import MULTIPART_OVERHEAD, router
from ocr_service.api.security import ApiKeys
from ocr_service.api.slots import Slots
from ocr_service.api.state import ApiConfig, AppState, Services, state_of
from ocr_service.config import Settings
from ocr_service.core.batcher import Batcher
from ocr_service.core.intake import Defaults, Intake
from ocr_service.core.keeper import DocumentKeeper
from ocr_service.core.ledger import WorkLedger
from ocr_service.core.metrics import Metrics
from ocr_service.core.page_images import PageImages
from ocr_service.core.queue import PageQueue
from ocr_service.core.redis_store import RedisTaskStore
from ocr_service.core.sqlite_store import SqliteTaskStore
from ocr_service.core.store import MemoryTaskStore, TaskStore
from ocr_service.core.supervisor import Supervisor
from ocr_service.documents import DecoderPool, DocumentLimits
from ocr_service.documents.fetch import FetchPolicy, UrlFetcher
from ocr_service.engines.base import Engine
from ocr_service.engines.registry import build_engine, resolution_mode_of

logger = logging.getLogger(__name__)


def create_app(settings: Settings, engine: Engine | None = None) -> FastAPI:
    """Build the app. With `engine` given it is used as is (and loaded at start)."""
    state = AppState(config=api_config(settings), api_keys=ApiKeys(settings.api_key_list), metrics=Metrics())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        the_engine = engine if engine is not None else build_engine(settings)
        logger.info("loading engine %s", the_engine.name)
        await asyncio.to_thread(the_engine.load)
        store = build_store(settings)
        queue = PageQueue()
        keeper = DocumentKeeper(settings.keep_documents_bytes)
        ledger = WorkLedger(
            store,
            queue,
            limit=settings.max_queue_size,
            max_stored=settings.max_stored_tasks,
            max_stored_per_client=settings.max_stored_tasks_per_client,
            expiry_interval=settings.cleanup_interval,
            keeper=keeper,
        )
        batcher = Batcher(
            queue,
            the_engine,
            ledger,
            batch_size=settings.batch_size,
            timeout=settings.batch_timeout,
            policy=settings.batch_policy,
            observer=state.metrics,
        )
        fetcher = UrlFetcher(fetch_policy(settings))
        decoder = decoder_pool(settings)
        await asyncio.to_thread(decoder.start)
        intake = Intake(ledger, fetcher, document_limits(settings), decoder)
        await store.open(take_over=intake.resume)
        restored = await store.restore()
        ledger.count_kept(restored.finished)
        await intake.resume(restored.unfinished)
        supervisor = Supervisor(ledger, batcher, keep_unfinished=store.keeps_work)
        services = Services(
            ledger=ledger,
            intake=intake,
            batcher=batcher,
            supervisor=supervisor,
            decoder=decoder,
            page_images=PageImages(keeper),
            event_streams=Slots(events.MAX_EVENT_STREAMS),
        )
        state.metrics.watch(services.status)
        supervisor.start()
        state.services = services
        cleanup = asyncio.create_task(ledger.run_cleanup(), name="task-cleanup")
        logger.info("serving with engine %s, batch size %d, policy %s", the_engine.name, settings.batch_size, settings.batch_policy)
        try:
            yield
        finally:
            await supervisor.shutdown(settings.shutdown_grace)  # at once if a SIGTERM drain already ran
            await asyncio.to_thread(decoder.close)
            cleanup.cancel()
            await asyncio.gather(cleanup, return_exceptions=True)
            await intake.aclose()
            await fetcher.aclose()
            await store.aclose()
            await asyncio.to_thread(the_engine.close)

    app = FastAPI(
        title="DeepSeek-OCR service",
        version=__version__,
        description="Images and PDFs in, Markdown with layout boxes out, through a bounded queue and a micro-batcher.",
        lifespan=lifespan,
        docs_url=None, redoc_url=None,  # served offline by docs.add_offline_docs
    )
    app.state.ocr = state
    app.include_router(ops.router)
    app.include_router(router)
    app.include_router(events.router)
    app.include_router(page_images.router)
    app.include_router(ui.router)
    ui.mount_ui(app)
    app.include_router(mistral.router)
    docs.add_offline_docs(app)
    add_error_handlers(app)
    app.add_middleware(AdmissionGate, state=state)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_upload_bytes + MULTIPART_OVERHEAD,
        limit_text=f"OCR_MAX_IMAGE_SIZE_MB={settings.max_image_size_mb:g}",
        timeout=settings.body_timeout,
    )
    if settings.rate_limit:
        app.add_middleware(RateLimitMiddleware, rate=settings.rate_limit, api_keys=state.api_keys)
    app.add_middleware(RequestObserver, metrics=state.metrics)  # outermost: sees every answer, 413 and 429 too
    return app


async def drain(app: FastAPI, grace: float) -> None:
    """Stop taking work and let running batches finish (run_service.py calls it on SIGTERM,
    while the server still answers polls); the lifespan's end then finds nothing to do."""
    services = state_of(app).services
    if services is not None:
        await services.supervisor.shutdown(grace)
        await asyncio.to_thread(services.decoder.close)  # a page still drawing fails now


def build_store(settings: Settings) -> TaskStore:
    if settings.store == "sqlite":
        return SqliteTaskStore(settings.store_path, ttl=settings.task_ttl)
    if settings.store == "redis":
        return RedisTaskStore(settings.redis_url, ttl=settings.task_ttl, front=settings.front_name)
    return MemoryTaskStore(ttl=settings.task_ttl)


def api_config(settings: Settings) -> ApiConfig:
    return ApiConfig(
        defaults=Defaults(settings.default_prompt, settings.default_temperature, settings.default_max_tokens),
        max_upload_bytes=settings.max_upload_bytes,
        max_batch_urls=settings.max_batch_urls,
        sync_timeout=settings.sync_timeout,
        engine=settings.engine,
        resolution_mode=resolution_mode_of(settings),
        max_pdf_pages=settings.max_pdf_pages,
    )


def document_limits(settings: Settings) -> DocumentLimits:
    return DocumentLimits(
        max_pixels=settings.max_image_pixels,
        max_pdf_pages=settings.max_pdf_pages,
        pdf_dpi=settings.pdf_dpi,
        pdf_max_pixels=settings.pdf_max_pixels,
    )


def decoder_pool(settings: Settings) -> DecoderPool:
    return DecoderPool(
        workers=settings.decode_workers,
        timeout=settings.decode_timeout,
        memory_mb=settings.decode_memory_mb,
        cache_mb=max(64, math.ceil(2 * settings.max_image_size_mb)),  # two of the largest uploads
    )


def fetch_policy(settings: Settings) -> FetchPolicy:
    return FetchPolicy(
        max_bytes=settings.max_upload_bytes,
        timeout=settings.image_download_timeout,
        allow_private=settings.allow_private_urls,
        max_redirects=settings.max_redirects,
        allowed_hosts=settings.url_allowed_host_set,
    )
