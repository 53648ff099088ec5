"""/docs and /redoc work offline: every script, style and icon they load comes from the service itself."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from tests.client_helpers import fake_service
from tests.helpers import ServiceProcess, running_app, settings

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's Chromium is not installed (apt-get install chromium; .ci/run does)"
)
CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png", ".json": "application/json"}


class References(HTMLParser):
    """Every `src`, `href` and (ReDoc's) `spec-url` of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href", "spec-url") and value]


def references(html: str) -> list[str]:
    parser = References()
    parser.feed(html)
    # Swagger UI is told where the schema is in its inline script, not in an attribute.
    return parser.urls + re.findall(r"url: '([^']*)'", html)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_pages_load_only_the_services_own_assets(page: str) -> None:
    async with running_app(settings()) as client:
        response = await client.get(page)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        urls = references(response.text)
        assert len(urls) >= 3  # script, icon, schema (and Swagger UI's stylesheet)
        for url in urls:
            assert url.startswith("/") and not url.startswith("//"), f"{page} loads {url} from elsewhere"
            asset = await client.get(url)
            assert asset.status_code == 200, url
            assert asset.headers["content-type"].startswith(CONTENT_TYPES[Path(url).suffix]), url
            assert len(asset.content) > 500, url


async def test_the_assets_are_swagger_ui_and_redoc_and_nothing_else_is_served() -> None:
    async with running_app(settings()) as client:
        swagger = (await client.get("/docs/assets/swagger-ui-5.31.0.js")).text
        assert "SwaggerUIBundle" in swagger
        redoc = await client.get("/docs/assets/redoc-2.5.4.js")
        assert "Redoc" in redoc.text
        assert "immutable" in redoc.headers["cache-control"]
        for name in ("index.html", "..%2F..%2Fapp.py", "redoc.standalone.js"):
            assert (await client.get(f"/docs/assets/{name}")).status_code == 404


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    with fake_service(tmp_path_factory.mktemp("docs")) as running:
        yield running


def rendered_dom(url: str, profile: Path) -> str:
    """The page's DOM after its scripts ran, in headless Chromium that can reach no host but this one."""
    assert CHROMIUM is not None, "chromium is not installed (apt-get install chromium)"
    result = subprocess.run(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # a CDN would not resolve
            "--virtual-time-budget=20000", "--dump-dom", url,
        ],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return result.stdout


@needs_chromium
def test_swagger_ui_renders_the_operations_with_no_other_host_reachable(service: ServiceProcess, tmp_path: Path) -> None:
    dom = rendered_dom(f"{service.url}/docs", tmp_path)
    assert 'class="swagger-ui' in dom
    for path in ("/ocr", "/v1/ocr", "/ocr/{task_id}"):
        assert f'data-path="{path}"' in dom


@needs_chromium
def test_redoc_renders_the_operations_with_no_other_host_reachable(service: ServiceProcess, tmp_path: Path) -> None:
    dom = rendered_dom(f"{service.url}/redoc", tmp_path)
    assert "api-content" in dom
    assert "/v1/ocr" in dom and "/ocr_batch" in dom


def test_docs_stay_open_when_api_keys_are_on(tmp_path: Path) -> None:
    with fake_service(tmp_path, api_keys="secret") as running:
        assert httpx.get(f"{running.url}/ocr/x", timeout=10).status_code == 401
        for path in ("/docs", "/redoc", "/docs/assets/redoc-2.5.4.js", "/openapi.json"):
            assert httpx.get(f"{running.url}{path}", timeout=10).status_code == 200, path
