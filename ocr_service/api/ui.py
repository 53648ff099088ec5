"""The web UI's files (`/ui/`), the redirect to them from `/`, and `GET /info`, what the UI
needs to know about this process.

The UI is static files in `ocr_service/ui/` (hand-written, plus vendored markdown-it and
DOMPurify): no build step, no CDN, nothing fetched from elsewhere, so it works offline.
They hold no data and need no API key; every call the UI makes to the API sends the key
the user entered. A strict Content-Security-Policy lets the page load scripts and
styles from this service only and connect nowhere else, so text that a model or a
document smuggles into the page cannot run or phone home even past the sanitizer.
"""

from __future__ import annotations

import os

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, Field
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from ocr_service import __version__
from ocr_service.api.models import errors
from ocr_service.api.state import Config, state_of
from ocr_service.deepseek import PROMPTS

router = APIRouter()

UI_PATH = "/ui"
MAX_TOKENS_LIMIT = 131072  # what the submit routes accept
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class ServiceInfo(BaseModel):
    """What a client needs to offer the right choices (no secrets)."""

    version: str
    engine: str = Field(description="OCR_ENGINE")
    resolution_mode: str | None = Field(
        description="OCR_RESOLUTION_MODE of the DeepSeek engines (one per process); null for engines without modes"
    )
    api_keys: bool = Field(description="Whether requests need an API key (X-API-Key or Authorization: Bearer)")
    prompts: dict[str, str] = Field(description="DeepSeek's documented prompts by name; in `locate`, replace TEXT")
    default_prompt: str
    default_max_tokens: int
    default_temperature: float
    max_tokens_limit: int
    max_upload_mb: float
    max_pdf_pages: int


@router.get("/info", response_model=ServiceInfo, tags=["operations"], responses=errors(429))
async def info(request: Request, config: Config) -> ServiceInfo:
    """Engine, resolution mode, prompt presets and defaults, and whether API keys are on. Needs no key."""
    defaults = config.defaults
    return ServiceInfo(
        version=__version__,
        engine=config.engine,
        resolution_mode=config.resolution_mode,
        api_keys=state_of(request.app).api_keys.enabled,
        prompts=PROMPTS,
        default_prompt=defaults.prompt,
        default_max_tokens=defaults.max_tokens,
        default_temperature=defaults.temperature,
        max_tokens_limit=MAX_TOKENS_LIMIT,
        max_upload_mb=round(config.max_upload_bytes / (1024 * 1024), 3),
        max_pdf_pages=config.max_pdf_pages,
    )


@router.get("/", include_in_schema=False)
async def root() -> RedirectResponse:
    return RedirectResponse("ui/")  # relative: right behind a proxy that serves us under a prefix


class UiFiles(StaticFiles):
    """The UI's files, each with the security headers above."""

    def file_response(self, full_path: str | os.PathLike[str], stat_result: os.stat_result, scope: Scope, status_code: int = 200) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(SECURITY_HEADERS)
        return response


def mount_ui(app: FastAPI) -> None:
    """Serve `ocr_service/ui/` at /ui/ (GET /ui redirects there); found through the package,
    so it works from a clean clone and from an installed copy alike."""
    app.mount(UI_PATH, UiFiles(packages=[("ocr_service", "ui")], html=True), name="ui")
