"""The web UI in a real browser (Chromium through Playwright) against real service processes.

Each test saves a screenshot of every step in one folder, printed at the start (run with
`-s` to see it). With UI_SCREENSHOT_TO=docs/ui.png set, the RapidOCR test also writes its
final screenshot there, reduced to a small palette PNG for the README.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.helpers import ROOT, encode, service_process, text_page

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in requirements_test.txt")
CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("Debian's Chromium is not installed (apt-get install chromium; .ci/run does)", allow_module_level=True)

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 900}


@pytest.fixture(scope="module")
def browser() -> Iterator[sync_api.Browser]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ui-screenshots")
    print(f"\nUI screenshots: {folder}")
    return folder


class Session:
    """One browser page on the UI, with every request URL and console error it saw."""

    def __init__(self, browser: sync_api.Browser, url: str, shots: Path, name: str) -> None:
        self.context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
        self.context.grant_permissions(["clipboard-read", "clipboard-write"])
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        self.url = url
        self.shots = shots
        self.name = name
        self.step = 0

    def shot(self, what: str) -> Path:
        self.step += 1
        path = self.shots / f"{self.name}-{self.step:02d}-{what}.png"
        self.page.screenshot(path=path)
        return path

    def open(self) -> None:
        self.page.goto(self.url + "/")
        assert self.page.url == self.url + "/ui/"
        self.page.wait_for_selector("#service-info:has-text('engine')")

    def card(self, name: str) -> sync_api.Locator:
        return self.page.locator(".task-card", has=self.page.locator(".task-name", has_text=name))

    def select(self, name: str) -> None:
        self.card(name).locator(".task-open").click()
        sync_api.expect(self.page.locator("#viewer-title")).to_have_text(name)

    def download(self, button: str) -> str:
        with self.page.expect_download() as info:
            self.page.click(button)
        return Path(info.value.path()).read_text()

    def close(self) -> None:
        self.context.close()


def two_page_pdf(path: Path, lines: list[list[str]], size: tuple[int, int] = (1000, 700)) -> Path:
    pages = [text_page(page_lines, size=size, font_size=34) for page_lines in lines]
    pages[0].save(path, format="PDF", save_all=True, append_images=pages[1:], resolution=150)
    return path


def image_task_id(session: Session, name: str) -> str:
    return session.card(name).get_attribute("data-task-id") or ""


def natural_size(session: Session) -> tuple[int, int]:
    image = session.page.locator("#page-image")
    sync_api.expect(image).to_have_attribute("src", __import__("re").compile("^blob:"))
    session.page.wait_for_function("document.getElementById('page-image').naturalWidth > 0")
    return tuple(image.evaluate("img => [img.naturalWidth, img.naturalHeight]"))  # type: ignore[return-value]


# -- the fake engine: every feature, quickly --------------------------------------------


def test_upload_read_pages_side_by_side_and_download(browser: sync_api.Browser, shots: Path, tmp_path: Path) -> None:
    scan = tmp_path / "scan.png"
    scan.write_bytes(encode(text_page(["A single scanned page"], size=(900, 1200))))
    report = two_page_pdf(tmp_path / "report.pdf", [["Report page one"], ["Report page two"]])
    env = {"OCR_ENGINE": "fake", "OCR_FAKE_BATCH_LATENCY": "0.2", "OCR_BATCH_SIZE": "1"}
    with service_process(tmp_path, env) as service:
        session = Session(browser, service.url, shots, "fake")
        session.open()
        page = session.page
        session.shot("opened")
        page.set_input_files("#file-input", [str(scan), str(report)])
        sync_api.expect(page.locator("#chosen-files li")).to_have_count(2)
        session.shot("files-chosen")
        page.click("#submit-button")
        for name in ("scan.png", "report.pdf"):
            sync_api.expect(session.card(name).locator(".badge")).to_have_text("completed", timeout=30_000)
        session.shot("both-completed")

        session.select("report.pdf")
        task_id = image_task_id(session, "report.pdf")
        server = httpx.get(f"{service.url}/ocr/{task_id}").json()
        first = server["pages"][0]
        sync_api.expect(page.locator("#page-count")).to_have_text("2")
        assert natural_size(session) == (first["width"], first["height"])
        sync_api.expect(page.locator("#page-boxes rect")).to_have_count(len(first["blocks"]))
        sync_api.expect(page.locator("#page-text")).to_contain_text(first["markdown"].split("\n")[0].lstrip("# "))
        figure = page.locator("#page-text img.figure")
        sync_api.expect(figure).to_have_count(1)
        page.wait_for_function("document.querySelector('#page-text img.figure').naturalWidth > 0")
        session.shot("page-1-with-boxes")

        page.locator("#page-boxes rect").nth(1).hover()  # the text block's box
        sync_api.expect(page.locator("#page-text .segment.hl")).to_contain_text("fake-ocr sha256=")
        page.locator("#page-text .segment").first.hover()  # and the other way round
        sync_api.expect(page.locator("#page-boxes rect.hl")).to_have_count(1)
        session.shot("hover-links-box-and-text")

        page.click("#next-page")
        second = server["pages"][1]
        sync_api.expect(page.locator("#page-input")).to_have_value("2")
        sha = second["markdown"].split("sha256=")[1].split()[0]
        sync_api.expect(page.locator("#page-text")).to_contain_text(sha)
        assert natural_size(session) == (second["width"], second["height"])
        session.shot("page-2")

        page.uncheck("#boxes-toggle")
        sync_api.expect(page.locator("#page-boxes")).to_be_hidden()
        page.click("#view-raw")
        sync_api.expect(page.locator("#page-raw")).to_contain_text("![](images/page-2-1.png)")
        session.shot("raw-markdown-no-boxes")

        markdown = session.download("#download-md")
        assert markdown == server["result"]
        as_json = json.loads(session.download("#download-json"))
        assert [p["page"] for p in as_json["pages"]] == [1, 2]
        assert as_json["pages"][0]["blocks"][0]["bbox"] == first["blocks"][0]["bbox"]
        page.click("#copy-md")
        assert page.evaluate("navigator.clipboard.readText()") == server["result"]

        session.select("scan.png")
        sync_api.expect(page.locator("#page-strip")).to_be_hidden()  # one page: no page strip
        sync_api.expect(page.locator("#page-raw")).to_contain_text("Fake page 900x1200")
        assert not session.errors, session.errors
        session.close()


def test_truncated_and_failed_pages_are_marked_with_the_reason(browser: sync_api.Browser, shots: Path, tmp_path: Path) -> None:
    scan = tmp_path / "long.png"
    scan.write_bytes(encode(text_page(["a page with many words"], size=(600, 400))))
    broken = tmp_path / "broken.png"
    broken.write_bytes(encode(text_page(["the engine fails here"], size=(600, 400))))
    with service_process(tmp_path, {"OCR_ENGINE": "fake"}) as service:
        session = Session(browser, service.url, shots, "marked")
        session.open()
        page = session.page
        page.select_option("#preset-select", "free")
        page.fill("#max-tokens-input", "2")  # the fake engine counts words as tokens: it reads 3
        page.set_input_files("#file-input", [str(scan)])
        page.click("#submit-button")
        card = session.card("long.png")
        sync_api.expect(card.locator(".task-status")).to_have_text("1 page · 1 truncated", timeout=20_000)
        sync_api.expect(page.locator("#page-banner.warning")).to_contain_text("stopped at max_tokens (2)")
        sync_api.expect(page.locator("#page-strip")).to_be_hidden()
        session.shot("truncated")

        page.select_option("#preset-select", "custom")
        page.fill("#prompt-input", "<image>\nFree OCR. [fake:fail]")  # the fake engine fails such a page
        page.fill("#max-tokens-input", "100")
        page.set_input_files("#file-input", [str(broken)])
        page.click("#submit-button")
        failed = session.card("broken.png")
        sync_api.expect(failed.locator(".badge")).to_have_text("failed", timeout=20_000)
        failed.locator(".task-open").click()
        sync_api.expect(page.locator("#page-banner.error")).to_contain_text("the task failed. page 1: fake engine failed")
        session.shot("failed")
        assert not session.errors, session.errors
        session.close()


def test_cancel_a_waiting_and_a_running_task(browser: sync_api.Browser, shots: Path, tmp_path: Path) -> None:
    files = []
    for number in range(3):
        path = tmp_path / f"page{number}.png"
        path.write_bytes(encode(text_page([f"page {number}"], size=(400, 300))))
        files.append(str(path))
    env = {"OCR_ENGINE": "fake", "OCR_FAKE_BATCH_LATENCY": "4", "OCR_BATCH_SIZE": "1"}
    with service_process(tmp_path, env) as service:
        session = Session(browser, service.url, shots, "cancel")
        session.open()
        page = session.page
        page.set_input_files("#file-input", files)
        page.click("#submit-button")
        waiting = session.card("page2.png")
        sync_api.expect(waiting.locator(".task-status")).to_contain_text("1 page ahead", timeout=10_000)
        sync_api.expect(session.card("page1.png").locator(".task-status")).to_contain_text("next in line")
        sync_api.expect(session.card("page0.png").locator(".badge")).to_have_text("processing")
        session.shot("one-running-two-waiting")
        waiting.locator("button.cancel").click()
        sync_api.expect(waiting.locator(".badge")).to_have_text("cancelled")
        session.shot("cancelled")
        task_id = waiting.get_attribute("data-task-id")
        assert httpx.get(f"{service.url}/ocr/{task_id}").json()["status"] == "cancelled"
        running = session.card("page0.png")
        running.locator("button.cancel").click()  # a running task can be cancelled too
        sync_api.expect(running.locator(".badge")).to_have_text("cancelled")
        sync_api.expect(running.locator("button.cancel")).to_have_count(0)
        session.shot("running-one-cancelled")
        assert not session.errors, session.errors
        session.close()


def test_api_key_is_asked_once_kept_and_never_put_in_a_url(browser: sync_api.Browser, shots: Path, tmp_path: Path) -> None:
    scan = tmp_path / "keyed.png"
    scan.write_bytes(encode(text_page(["keyed page"], size=(500, 400))))
    key = "k3y-" + hashlib.sha256(b"ui test").hexdigest()[:16]
    with service_process(tmp_path, {"OCR_ENGINE": "fake", "OCR_API_KEYS": key}) as service:
        session = Session(browser, service.url, shots, "keys")
        session.open()
        page = session.page
        sync_api.expect(page.locator("#key-form")).to_be_visible()
        page.fill("#key-input", "wrong-key")
        page.click("#key-form button")
        page.set_input_files("#file-input", [str(scan)])
        page.click("#submit-button")
        sync_api.expect(page.locator("#key-message")).to_contain_text("a valid API key is required")  # the server's detail
        sync_api.expect(page.locator("#chosen-files li")).to_have_count(1)  # kept for another try
        session.shot("wrong-key")
        page.fill("#key-input", key)
        page.click("#key-form button")
        page.click("#submit-button")
        card = page.locator(".task-card.status-completed", has=page.locator(".task-name", has_text="keyed.png"))
        sync_api.expect(card).to_have_count(1, timeout=20_000)
        card.locator(".task-open").click()
        natural_size(session)
        session.shot("with-key")

        page.reload()  # the key and the task are remembered by this browser
        page.wait_for_selector("#service-info:has-text('engine')")
        sync_api.expect(page.locator("#key-form")).to_be_hidden()
        sync_api.expect(page.locator(".task-card.status-completed")).to_have_count(1)
        assert not [url for url in session.requests if key in url]
        session.close()


def test_model_text_is_rendered_safely(browser: sync_api.Browser, shots: Path, tmp_path: Path) -> None:
    hostile = "\n\n".join(
        [
            "# Title",
            "<script>window.pwned = 1</script>",
            "Text <img src=x onerror=\"window.pwned = 2\"> inline",
            "[click](javascript:window.pwned=3) and ![remote](https://example.invalid/track.png)",
            "<table><tr><td onclick=\"window.pwned = 4\">cell</td></tr></table>",
            "<iframe src=\"https://example.invalid\"></iframe>",
            "![figure](images/page-1-1.png)",
        ]
    )
    with service_process(tmp_path, {"OCR_ENGINE": "fake"}) as service:
        session = Session(browser, service.url, shots, "sanitize")
        session.open()
        html = session.page.evaluate(
            """async (text) => {
                const { renderMarkdown } = await import('./js/render.js');
                const box = document.createElement('div');
                box.append(renderMarkdown(text, (name, img) => { img.dataset.figure = name; }));
                document.body.append(box);
                await new Promise((resolve) => setTimeout(resolve, 300));
                return box.innerHTML;
            }""",
            hostile,
        )
        assert session.page.evaluate("window.pwned") is None
        session.close()
    assert "<table>" in html and "<td>cell</td>" in html and "<h1>Title</h1>" in html
    assert 'data-figure="images/page-1-1.png"' in html  # the page's own figure crop is kept
    assert "<p>[click](javascript:window.pwned=3) and remote</p>" in html  # no link; the remote image is its alt text
    for banned in ("<script", "onerror", "onclick", "href=\"javascript", "<iframe", "example.invalid"):
        assert banned not in html
    assert not [url for url in session.requests if "example.invalid" in url]


# -- the default engine: real text ------------------------------------------------------


def test_real_text_on_rapidocr(browser: sync_api.Browser, shots: Path, tmp_path: Path) -> None:
    invoice = tmp_path / "invoice.png"
    invoice.write_bytes(encode(text_page(["Invoice number 4711", "The quick brown fox jumps", "over the lazy dog"])))
    first_page = [
        "Annual report 2025",
        "",
        "Revenue grew by twelve percent to 48.2 million",
        "while costs stayed flat. The new service line",
        "opened in March and served 1,240 customers.",
        "",
        "Region        Revenue    Change",
        "North         18.4       +9%",
        "South         16.1       +15%",
        "West          13.7       +12%",
        "",
        "The board proposes a dividend of 0.42 per share.",
    ]
    second_page = ["Outlook for next year", "", "We expect steady growth in every region", "and two new offices by the autumn."]
    report = two_page_pdf(tmp_path / "annual-report.pdf", [first_page, second_page], size=(1240, 1754))
    with service_process(tmp_path, {"OCR_BATCH_TIMEOUT": "0.1"}) as service:
        session = Session(browser, service.url, shots, "rapidocr")
        session.open()
        page = session.page
        sync_api.expect(page.locator("#service-info")).to_contain_text("engine rapidocr")
        page.set_input_files("#file-input", [str(invoice), str(report)])
        page.click("#submit-button")
        for name in ("invoice.png", "annual-report.pdf"):
            sync_api.expect(session.card(name).locator(".badge")).to_have_text("completed", timeout=120_000)

        session.select("invoice.png")
        sync_api.expect(page.locator("#page-text")).to_contain_text("Invoice number 4711")
        sync_api.expect(page.locator("#page-text")).to_contain_text("quick brown fox")
        session.shot("invoice")

        session.select("annual-report.pdf")
        task_id = image_task_id(session, "annual-report.pdf")
        server = httpx.get(f"{service.url}/ocr/{task_id}").json()
        sync_api.expect(page.locator("#page-text")).to_contain_text("Revenue grew by twelve percent")
        assert natural_size(session) == (server["pages"][0]["width"], server["pages"][0]["height"])
        sync_api.expect(page.locator("#page-boxes rect")).to_have_count(len(server["pages"][0]["blocks"]))
        page.locator("#page-strip button", has_text="2").click()
        sync_api.expect(page.locator("#page-text")).to_contain_text("We expect steady growth")
        markdown = session.download("#download-md")
        assert "Annual report 2025" in markdown and "We expect steady growth" in markdown
        assert markdown == server["result"]
        page.locator("#page-strip button", has_text="1").click()
        sync_api.expect(page.locator("#page-text")).to_contain_text("Annual report 2025")
        page.locator("#page-boxes rect").first.hover()
        final = session.shot("report-page-1")
        assert not session.errors, session.errors
        session.close()

    target = os.environ.get("UI_SCREENSHOT_TO")
    if target:
        save_small(final, ROOT / target)


def save_small(source: Path, target: Path) -> None:
    """A palette PNG of the screenshot: a fraction of the size, fine for a UI of flat colours."""
    image = Image.open(source).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(buffer.getvalue())
    shutil.copystat(source, target)
