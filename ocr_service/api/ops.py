"""Routes for operators: liveness, readiness and Prometheus metrics.

`/health` answers while the process runs; `/ready` only while the service can take
work (engine loaded, batcher alive, not shutting down), so a load balancer stops
sending traffic before work would be refused or lost. Neither needs an API key.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from ocr_service.api.models import errors
from ocr_service.api.security import Owner
from ocr_service.api.state import state_of
from ocr_service.core.metrics import CONTENT_TYPE

router = APIRouter(tags=["operations"])


@router.get("/health")
async def health() -> JSONResponse:
    """Liveness: the process is up."""
    return JSONResponse({"status": "ok"})


@router.get("/ready", responses={503: {"description": "Not ready: starting, shutting down, or the batcher died"}})
async def ready(request: Request) -> JSONResponse:
    """Readiness: 200 while the engine is loaded and the batcher runs, 503 otherwise."""
    services = state_of(request.app).services
    if services is None:
        return JSONResponse({"status": "starting", "detail": "the engine is loading"}, status_code=503)
    supervisor = services.supervisor
    if supervisor.ready:
        return JSONResponse({"status": "ready"})
    if not supervisor.engine_healthy:
        detail = "no engine worker is alive; they are restarting (see /stats: workers)"
        return JSONResponse({"status": "engine_down", "detail": detail}, status_code=503)
    return JSONResponse({"status": supervisor.state.value, "detail": supervisor.reason}, status_code=503)


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE: {}}}, **errors(401)})
async def metrics(request: Request, _owner: Owner) -> Response:
    """Prometheus metrics in the text exposition format."""
    return Response(state_of(request.app).metrics.render(), media_type=CONTENT_TYPE)
