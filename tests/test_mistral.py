"""POST /v1/ocr driven by the real `mistralai` SDK (3.x), as its users call it, against a running service."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest
import uvicorn
from mistralai.client import Mistral
from mistralai.client.errors import HTTPValidationError, SDKError
from mistralai.client.models import (
    OCRCaptionBlock,
    OCRFooterBlock,
    OCRHeaderBlock,
    OCRImageBlock,
    OCRTableBlock,
    OCRTextBlock,
    OCRTitleBlock,
)
from PIL import Image, ImageDraw

from ocr_service.app import create_app
from ocr_service.documents import DecoderPool, DocumentLimits, open_document
from ocr_service.engines.base import BatchEngine, DecodedPage, EngineError, PageOutcome, PageOutput
from ocr_service.engines.fake import fake_text
from tests.client_helpers import fake_service
from tests.files import make_pdf
from tests.helpers import ServiceProcess, encode, file_server, free_port, running_app, settings, text_page

PDF_PAGES = [(300.0, 400.0, (200, 30, 30)), (200.0, 250.0, (30, 200, 30)), (250.0, 300.0, (30, 30, 200))]


def data_uri(data: bytes, media_type: str) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def digest(image: Image.Image) -> str:
    """What the fake engine writes for a page: the SHA-256 of its RGB pixels."""
    return hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    with fake_service(tmp_path_factory.mktemp("mistral")) as running:
        yield running


@pytest.fixture(scope="module")
def client(service: ServiceProcess) -> Mistral:
    return Mistral(api_key="unused", server_url=service.url)


def test_an_image_by_data_uri_gives_markdown_dimensions_and_typed_blocks(client: Mistral) -> None:
    page = text_page(["Mistral-compatible"], size=(640, 480))
    png = encode(page)

    answer = client.ocr.process(model="mistral-ocr-latest", document={"type": "image_url", "image_url": data_uri(png, "image/png")})

    assert answer.model == "fake"
    assert answer.usage_info.pages_processed == 1
    assert answer.usage_info.doc_size_bytes == len(png)
    [result] = answer.pages
    assert result.index == 0
    assert f"sha256={digest(page)}" in result.markdown
    assert result.markdown.startswith("# Fake page 640x480")
    assert result.markdown.endswith("![img-0.png](img-0.png)")  # the fake engine's image region
    assert [image.id for image in result.images] == ["img-0.png"]
    assert result.dimensions is not None
    assert (result.dimensions.width, result.dimensions.height, result.dimensions.dpi) == (640, 480, 72)
    assert result.blocks is not None
    title, text, figure = result.blocks
    # The fake engine's boxes [100, 40, 900, 110] and [100, 150, 900, 800] on the 0..999 grid, in pixels.
    assert isinstance(title, OCRTitleBlock)
    assert (title.top_left_x, title.top_left_y, title.bottom_right_x, title.bottom_right_y) == (64, 19, 577, 53)
    assert title.content == "# Fake page 640x480"
    assert isinstance(text, OCRTextBlock)
    assert (text.top_left_x, text.top_left_y, text.bottom_right_x, text.bottom_right_y) == (64, 72, 577, 385)
    assert text.content == fake_text(DecodedPage(page, "", 0, 1))
    assert isinstance(figure, OCRImageBlock) and figure.image_id == "img-0.png"


def test_include_image_base64_gives_each_image_its_region_of_the_page(client: Mistral) -> None:
    page = Image.effect_noise((640, 480), 80).convert("RGB")  # every region differs
    answer = client.ocr.process(
        model="m", document={"type": "image_url", "image_url": data_uri(encode(page), "image/png")}, include_image_base64=True
    )
    [image] = answer.pages[0].images
    # The fake engine's image box [250, 820, 750, 960] on the 0..999 grid, widened to whole pixels.
    corners = (image.top_left_x, image.top_left_y, image.bottom_right_x, image.bottom_right_y)
    assert corners == (160, 393, 481, 462)
    crop = decode_crop(image.image_base64 or "")
    assert crop.size == (481 - 160, 462 - 393)
    assert crop.tobytes() == page.crop(corners).tobytes()  # lossless: exactly those pixels


def test_without_blocks_the_answer_has_none(client: Mistral) -> None:
    png = encode(text_page(["x"], size=(100, 80)))
    answer = client.ocr.process(model=None, document={"type": "image_url", "image_url": {"url": data_uri(png, "image/png")}}, include_blocks=False)
    assert not answer.pages[0].blocks  # absent, which the SDK reads as unset
    assert answer.pages[0].markdown.startswith("# Fake page 100x80")


def test_a_pdf_by_url_with_selected_pages(client: Mistral) -> None:
    pdf = make_pdf(PDF_PAGES)
    with file_server({"/report.pdf": pdf}) as base:
        answer = client.ocr.process(
            model="mistral-ocr-latest",
            document={"type": "document_url", "document_url": f"{base}/report.pdf", "document_name": "report.pdf"},
            pages=[2, 0],
        )
    assert [page.index for page in answer.pages] == [0, 2]
    with DecoderPool(workers=1) as pool:
        rendered = open_document(pdf, DocumentLimits(max_pixels=10**8, max_pdf_pages=10), pool)
        for page in answer.pages:
            image = rendered.load_page(page.index)
            assert f"sha256={digest(image)}" in page.markdown  # the engine read exactly that page
            assert page.dimensions is not None
            assert (page.dimensions.width, page.dimensions.height, page.dimensions.dpi) == (*image.size, 144)
    assert answer.usage_info.pages_processed == 2  # only the selected pages are read
    assert answer.usage_info.doc_size_bytes == len(pdf)


def test_pages_as_a_string_of_ranges(client: Mistral) -> None:
    pdf = make_pdf(PDF_PAGES)
    answer = client.ocr.process(model="m", document={"type": "document_url", "document_url": data_uri(pdf, "application/pdf")}, pages="1-2")
    assert [page.index for page in answer.pages] == [1, 2]


def test_all_pages_of_a_pdf_by_data_uri(client: Mistral) -> None:
    pdf = make_pdf(PDF_PAGES)
    answer = client.ocr.process(model="m", document={"type": "document_url", "document_url": data_uri(pdf, "application/pdf")})
    assert [page.index for page in answer.pages] == [0, 1, 2]
    assert [page.dimensions.width for page in answer.pages if page.dimensions] == [600, 400, 500]


def test_a_page_out_of_range_is_the_sdks_validation_error(client: Mistral) -> None:
    pdf = make_pdf(PDF_PAGES)
    with pytest.raises(HTTPValidationError) as raised:
        client.ocr.process(model="m", document={"type": "document_url", "document_url": data_uri(pdf, "application/pdf")}, pages=[0, 3])
    assert raised.value.status_code == 422
    [error] = raised.value.data.detail or []
    assert error.loc == ["body", "pages"]
    assert "has 3 pages (0 to 2)" in error.msg


@pytest.mark.parametrize(
    ("document", "loc", "words"),
    [
        ({"type": "image_url", "image_url": "data:image/png;base64,not base64!"}, ["body", "document", "image_url"], "not valid base64"),
        ({"type": "image_url", "image_url": data_uri(b"just text", "image/png")}, ["body", "document"], "Unsupported file type"),
        ({"type": "document_url", "document_url": "ftp://example.com/a.pdf"}, ["body", "document", "document_url"], "http"),
        ({"type": "file", "file_id": "abc"}, ["body", "document", "file_id"], "not supported"),
    ],
)
def test_a_bad_document_is_the_sdks_validation_error(client: Mistral, document: dict, loc: list[str], words: str) -> None:
    with pytest.raises(HTTPValidationError) as raised:
        client.ocr.process(model="m", document=document)
    [error] = raised.value.data.detail or []
    assert error.loc == loc
    assert words in error.msg


def test_an_unreachable_url_is_refused_with_the_fetchers_reason(client: Mistral) -> None:
    with file_server({}) as base, pytest.raises(HTTPValidationError) as raised:
        client.ocr.process(model="m", document={"type": "document_url", "document_url": f"{base}/missing.pdf"})
    assert "404" in (raised.value.data.detail or [])[0].msg


def test_features_the_service_cannot_honour_are_refused_not_ignored(client: Mistral) -> None:
    png = data_uri(encode(text_page(["x"], size=(50, 50))), "image/png")
    with pytest.raises(HTTPValidationError) as raised:
        client.ocr.process(model="m", document={"type": "image_url", "image_url": png}, document_annotation_prompt="Summarise")
    assert (raised.value.data.detail or [])[0].loc == ["body", "document_annotation_prompt"]
    with pytest.raises(HTTPValidationError):
        client.ocr.process(model="m", document={"type": "image_url", "image_url": png}, table_format="markdown")


@pytest.fixture(scope="module")
def slow_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """A queue of one page and an engine that takes 3 s a batch; the sync wait is 1 s."""
    with fake_service(
        tmp_path_factory.mktemp("slow"), max_queue_size="1", fake_batch_latency="3", sync_timeout="1", batch_size="1"
    ) as running:
        yield running


def test_past_the_sync_timeout_the_answer_is_504_naming_the_task_which_goes_on(slow_service: ServiceProcess) -> None:
    client = Mistral(api_key="unused", server_url=slow_service.url)
    png = encode(text_page(["slow"], size=(60, 40)))
    with pytest.raises(SDKError) as raised:
        client.ocr.process(model="m", document={"type": "image_url", "image_url": data_uri(png, "image/png")})
    assert raised.value.status_code == 504
    body = raised.value.raw_response.json()
    assert body["object"] == "error" and "OCR_SYNC_TIMEOUT" in body["detail"]
    task = httpx.get(f"{slow_service.url}/ocr/{body['task_id']}", params={"wait": 10}, timeout=20).json()
    assert task["status"] == "completed"


def test_a_full_queue_is_the_sdks_error_with_503(slow_service: ServiceProcess) -> None:
    upload = encode(text_page(["busy"], size=(60, 40)))
    running = [httpx.post(f"{slow_service.url}/ocr", files={"file": ("p.png", upload)}, timeout=10).json()["task_id"]]
    deadline = time.monotonic() + 10
    while httpx.get(f"{slow_service.url}/stats", timeout=10).json()["pages_in_flight"] < 1:  # the engine has it
        assert time.monotonic() < deadline
        time.sleep(0.05)
    running.append(httpx.post(f"{slow_service.url}/ocr", files={"file": ("p.png", upload)}, timeout=10).json()["task_id"])
    client = Mistral(api_key="unused", server_url=slow_service.url)
    try:
        with pytest.raises(SDKError) as raised:
            client.ocr.process(model="m", document={"type": "image_url", "image_url": data_uri(upload, "image/png")})
        assert raised.value.status_code == 503
        assert int(raised.value.headers["retry-after"]) >= 1
        assert "full capacity" in raised.value.raw_response.json()["detail"]
    finally:
        for task_id in running:
            httpx.delete(f"{slow_service.url}/ocr/{task_id}", timeout=10)


# -- images, tables, header and footer: an engine whose layout has them all ------------

# A page's layout on DeepSeek's 0..999 grid.
IMAGE_BOX = (100, 200, 500, 600)
LAYOUT = (
    "<|ref|>header<|/ref|><|det|>[[50, 10, 950, 30]]<|/det|>\nQuarterly report\n"
    "<|ref|>title<|/ref|><|det|>[[100, 40, 900, 110]]<|/det|>\n# Results\n"
    "<|ref|>image<|/ref|><|det|>[[{}, {}, {}, {}]]<|/det|>\n"
    "<|ref|>image_caption<|/ref|><|det|>[[100, 610, 500, 640]]<|/det|>\nFigure 1: red square\n"
    "<|ref|>table<|/ref|><|det|>[[100, 700, 900, 850]]<|/det|>\n<table><tr><td>a</td><td>b</td></tr></table>\n"
    "<|ref|>page_number<|/ref|><|det|>[[450, 960, 550, 990]]<|/det|>\n7"
).format(*IMAGE_BOX)


class LayoutEngine(BatchEngine):
    """Answers every page with `LAYOUT`, as DeepSeek-OCR does with a grounding prompt."""

    name = "layout"

    def predict(self, pages: Sequence[DecodedPage]) -> list[PageOutcome]:
        return [PageOutput(LAYOUT, "stop") for _ in pages]


def figure_page(size: tuple[int, int], colour: tuple[int, int, int]) -> Image.Image:
    """A white page whose IMAGE_BOX region is filled with `colour`."""
    width, height = size
    page = Image.new("RGB", size, "white")
    x1, y1, x2, y2 = IMAGE_BOX
    ImageDraw.Draw(page).rectangle(
        (x1 * width / 999, y1 * height / 999, x2 * width / 999, y2 * height / 999), fill=colour
    )
    return page


@contextlib.contextmanager
def uvicorn_thread(engine: BatchEngine) -> Iterator[str]:
    """The app on `engine`, served by uvicorn on a loopback port from a thread of this process."""
    app = create_app(settings(), engine)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def layout_client() -> Iterator[Mistral]:
    with uvicorn_thread(LayoutEngine()) as url:
        yield Mistral(api_key="unused", server_url=url)


def decode_crop(image_base64: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert image_base64.startswith(prefix)
    crop = Image.open(io.BytesIO(base64.b64decode(image_base64[len(prefix) :])))
    assert crop.format == "PNG"
    return crop.convert("RGB")


def test_images_have_ids_the_markdown_references_and_crops_of_their_region(layout_client: Mistral) -> None:
    page = figure_page((800, 1000), (220, 20, 20))
    answer = layout_client.ocr.process(
        model="m", document={"type": "image_url", "image_url": data_uri(encode(page, "JPEG"), "image/jpeg")}, include_image_base64=True
    )
    [result] = answer.pages
    [image] = result.images
    assert image.id == "img-0.png"
    assert "![img-0.png](img-0.png)" in result.markdown
    assert "images/page-" not in result.markdown
    corners = (image.top_left_x, image.top_left_y, image.bottom_right_x, image.bottom_right_y)
    assert corners == (80, 200, 401, 601)  # the grid box in pixels, widened to whole pixels
    assert image.image_base64 is not None
    crop = decode_crop(image.image_base64)
    assert crop.size == (401 - 80, 601 - 200)
    red, green, blue = crop.getpixel((crop.width // 2, crop.height // 2))
    assert red > 180 and green < 70 and blue < 70  # the red region, not another part of the page
    blocks = result.blocks or []
    assert [type(block) for block in blocks] == [
        OCRHeaderBlock, OCRTitleBlock, OCRImageBlock, OCRCaptionBlock, OCRTableBlock, OCRFooterBlock
    ]  # fmt: skip
    image_block = blocks[2]
    assert isinstance(image_block, OCRImageBlock)
    assert image_block.image_id == "img-0.png"
    assert (image_block.top_left_x, image_block.bottom_right_y) == (80, 601)
    assert "<table>" in result.markdown and result.tables == []  # tables stay inline by default
    assert not result.header and "Quarterly report" in result.markdown


def test_image_ids_count_across_pages_and_crops_come_from_each_page(layout_client: Mistral) -> None:
    pages = [figure_page((600, 800), (220, 20, 20)), figure_page((600, 800), (20, 20, 220))]
    buffer = io.BytesIO()
    pages[0].save(buffer, format="PDF", save_all=True, append_images=pages[1:], resolution=144)
    answer = layout_client.ocr.process(
        model="m", document={"type": "document_url", "document_url": data_uri(buffer.getvalue(), "application/pdf")}, include_image_base64=True
    )
    assert [[image.id for image in page.images] for page in answer.pages] == [["img-0.png"], ["img-1.png"]]
    assert "![img-1.png](img-1.png)" in answer.pages[1].markdown
    centres = []
    for page in answer.pages:
        crop = decode_crop(page.images[0].image_base64 or "")
        centres.append(crop.getpixel((crop.width // 2, crop.height // 2)))
    assert centres[0][0] > 180 and centres[1][2] > 180  # red from page 0, blue from page 1


def test_without_image_base64_images_have_corners_only(layout_client: Mistral) -> None:
    page = figure_page((400, 500), (0, 0, 0))
    answer = layout_client.ocr.process(model="m", document={"type": "image_url", "image_url": data_uri(encode(page), "image/png")})
    [image] = answer.pages[0].images
    assert not image.image_base64
    assert image.bottom_right_x > image.top_left_x


def test_image_limit_and_min_size_drop_images_with_their_references(layout_client: Mistral) -> None:
    page = data_uri(encode(figure_page((400, 500), (0, 0, 0))), "image/png")
    for options in ({"image_limit": 0}, {"image_min_size": 1000}):
        answer = layout_client.ocr.process(model="m", document={"type": "image_url", "image_url": page}, **options)
        [result] = answer.pages
        assert result.images == []
        assert "![" not in result.markdown
        assert not any(isinstance(block, OCRImageBlock) for block in result.blocks or [])


def test_tables_header_and_footer_are_extracted_on_request(layout_client: Mistral) -> None:
    page = data_uri(encode(figure_page((400, 500), (0, 0, 0))), "image/png")
    answer = layout_client.ocr.process(
        model="m", document={"type": "image_url", "image_url": page}, table_format="html", extract_header=True, extract_footer=True
    )
    [result] = answer.pages
    [table] = result.tables or []
    assert (table.id, table.format_, table.content) == ("tbl-0.html", "html", "<table><tr><td>a</td><td>b</td></tr></table>")
    assert "[tbl-0.html](tbl-0.html)" in result.markdown and "<table>" not in result.markdown
    table_block = next(block for block in result.blocks or [] if isinstance(block, OCRTableBlock))
    assert table_block.table_id == "tbl-0.html"
    assert result.header == "Quarterly report" and "Quarterly report" not in result.markdown
    assert result.footer == "7"
    assert result.markdown.endswith("[tbl-0.html](tbl-0.html)")


class FailingEngine(BatchEngine):
    name = "failing"

    def predict(self, pages: Sequence[DecodedPage]) -> list[PageOutcome]:
        return [EngineError("the model ran out of patience") for _ in pages]


def test_a_failed_ocr_is_a_500_naming_the_task_and_the_reason() -> None:
    with uvicorn_thread(FailingEngine()) as url:
        client = Mistral(api_key="unused", server_url=url)
        png = data_uri(encode(text_page(["x"], size=(50, 50))), "image/png")
        with pytest.raises(SDKError) as raised:
            client.ocr.process(model="m", document={"type": "image_url", "image_url": png})
        assert raised.value.status_code == 500
        body = raised.value.raw_response.json()
        assert "ran out of patience" in body["detail"]
        assert httpx.get(f"{url}/ocr/{body['task_id']}", timeout=10).json()["status"] == "failed"


def test_the_sdks_api_key_is_the_services_bearer_key(tmp_path: Path) -> None:
    png = data_uri(encode(text_page(["x"], size=(50, 50))), "image/png")
    with fake_service(tmp_path, api_keys="secret") as running:
        answer = Mistral(api_key="secret", server_url=running.url).ocr.process(model="m", document={"type": "image_url", "image_url": png})
        assert answer.pages[0].markdown.startswith("# Fake page 50x50")
        with pytest.raises(SDKError) as raised:
            Mistral(api_key="wrong", server_url=running.url).ocr.process(model="m", document={"type": "image_url", "image_url": png})
        assert raised.value.status_code == 401
        assert raised.value.raw_response.json()["type"] == "authentication_error"


async def test_a_data_uri_past_the_upload_limit_is_413_before_it_is_decoded() -> None:
    big = encode(Image.effect_noise((150, 150), 64).convert("RGB"))  # noise does not compress
    limit = 50 * 1024
    assert limit < len(big) and len(data_uri(big, "image/png")) < limit + 64 * 1024  # the body itself is let in
    async with running_app(settings(max_image_size_mb=limit / (1024 * 1024))) as http:
        response = await http.post("/v1/ocr", json={"model": "m", "document": {"type": "image_url", "image_url": data_uri(big, "image/png")}})
    assert response.status_code == 413
    assert response.json()["type"] == "request_too_large"
    assert "OCR_MAX_IMAGE_SIZE_MB" in response.json()["detail"]
