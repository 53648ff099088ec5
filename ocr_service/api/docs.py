"""`/docs` (Swagger UI) and `/redoc` served with their scripts from the service itself, never from a CDN.

FastAPI's own pages load Swagger UI, ReDoc and a favicon from public CDNs, so they stay
blank on a host that cannot reach the internet. Here the same pages point at
`/docs/assets/...`, answered from local files:
- Swagger UI 5.31.0 and its favicon from the `swagger-ui-bundle-v2` package (Apache-2.0;
  its version is the Swagger UI release it ships);
- ReDoc 2.5.4's `redoc.standalone.js`, vendored from npm's `redoc` package into
  `static/redoc-2.5.4/` with its MIT licence and the licences of what it bundles.

Asset paths carry the version, so browsers may cache them for good. Swagger UI's online
validator (which would send the schema's address to swagger.io) is switched off.
The app must be built with `docs_url=None, redoc_url=None`; `add_offline_docs` adds the
pages and the assets route in their place.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from swagger_ui_bundle import swagger_ui_path

SWAGGER_VERSION = "5.31.0"
REDOC_VERSION = "2.5.4"
_REDOC_DIR = Path(__file__).parent / "static" / f"redoc-{REDOC_VERSION}"

# What /docs/assets/{name} serves: the only files these pages load.
ASSETS: dict[str, tuple[Path, str]] = {
    f"swagger-ui-{SWAGGER_VERSION}.js": (Path(str(swagger_ui_path)) / "swagger-ui-bundle.js", "text/javascript"),
    f"swagger-ui-{SWAGGER_VERSION}.css": (Path(str(swagger_ui_path)) / "swagger-ui.css", "text/css"),
    f"favicon-{SWAGGER_VERSION}.png": (Path(str(swagger_ui_path)) / "favicon-32x32.png", "image/png"),
    f"redoc-{REDOC_VERSION}.js": (_REDOC_DIR / "redoc.standalone.js", "text/javascript"),
}
ASSETS_PATH = "/docs/assets"
_CACHE = {"Cache-Control": "public, max-age=31536000, immutable"}  # versioned names never change


def add_offline_docs(app: FastAPI, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Serve Swagger UI at `docs_url` and ReDoc at `redoc_url` from local assets."""
    missing = [str(path) for path, _ in ASSETS.values() if not path.is_file()]
    if missing:  # a broken install shows at start, not as a blank page
        raise RuntimeError(f"docs assets missing: {', '.join(missing)}")
    title = app.title

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-{SWAGGER_VERSION}.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui-{SWAGGER_VERSION}.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon-{SWAGGER_VERSION}.png",
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get(redoc_url, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_PATH}/redoc-{REDOC_VERSION}.js",
            redoc_favicon_url=f"{root}{ASSETS_PATH}/favicon-{SWAGGER_VERSION}.png",
            with_google_fonts=False,
        )

    @app.get(f"{ASSETS_PATH}/{{name}}", include_in_schema=False)
    async def asset(name: str) -> FileResponse:
        found = ASSETS.get(name)
        if found is None:
            raise HTTPException(404, f"no docs asset named {name!r}")
        path, media_type = found
        return FileResponse(path, media_type=media_type, headers=_CACHE)
