"""What the HTTP layer is given: one typed container in `app.state`, read through `state_of`.

`ApiConfig` and the keys exist from the start; `Services` (the ledger, intake and the
rest) only once the lifespan has loaded the engine. Routes declare what they need with
the `Services` and `Config` dependencies below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, FastAPI, HTTPException, Request

from ocr_service.api.slots import Slots
from ocr_service.core.batcher import Batcher
from ocr_service.core.intake import Defaults, Intake
from ocr_service.core.ledger import WorkLedger
from ocr_service.core.metrics import Metrics
from ocr_service.core.page_images import PageImages
from ocr_service.core.status import ServiceStatus, snapshot
from ocr_service.core.supervisor import Supervisor
from ocr_service.documents import DecoderPool

if TYPE_CHECKING:  # security reads the keys through `state_of`
    from ocr_service.api.security import ApiKeys


@dataclass(frozen=True)
class ApiConfig:
    """The settings routes apply themselves."""

    defaults: Defaults
    max_upload_bytes: int
    max_batch_urls: int
    sync_timeout: float  # how long POST /ocr_batch waits before answering 504
    # What GET /info tells clients (the web UI) about this process.
    engine: str = ""
    resolution_mode: str | None = None  # None for engines without resolution modes
    max_pdf_pages: int = 0


@dataclass(frozen=True)
class Services:
    """The running service, built by the lifespan."""

    ledger: WorkLedger
    intake: Intake
    batcher: Batcher
    supervisor: Supervisor
    decoder: DecoderPool  # the processes that open documents and draw their pages
    page_images: PageImages
    event_streams: Slots  # open GET /ocr/{id}/events responses

    def status(self) -> ServiceStatus:
        return snapshot(self.ledger, self.batcher, self.supervisor)


@dataclass
class AppState:
    config: ApiConfig
    api_keys: ApiKeys
    metrics: Metrics
    services: Services | None = None  # None until the engine is loaded


def state_of(app: FastAPI) -> AppState:
    state: AppState = app.state.ocr
    return state


def _config(request: Request) -> ApiConfig:
    return state_of(request.app).config


def _services(request: Request) -> Services:
    services = state_of(request.app).services
    if services is None:
        raise HTTPException(503, "the service is starting: the engine is loading", headers={"Retry-After": "5"})
    return services


Config = Annotated[ApiConfig, Depends(_config)]
Running = Annotated[Services, Depends(_services)]
