"""Documents through HTTP: PDFs page by page, TIFF frames, EXIF, grounding, truncation,
the seed-000 synchronous API, long polls, and every bad document refused cleanly."""

from __future__ import annotations

import asyncio
import hashlib
import io

from PIL import Image

from ocr_service.engines.fake import FakeEngine
from tests.files import make_pdf, png_header_only
from tests.helpers import (
    encode,
    file_server,
    running_app,
    settings,
    solid_image,
    upload,
    wait_for_task,
)

SEPARATOR = "\n<--- Page Split --->\n"
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def three_page_pdf() -> bytes:
    # 72 pt = 1 inch: at 144 dpi the pages are 144x144, 288x144 and 144x288 pixels
    return make_pdf([(72, 72, RED), (144, 72, GREEN), (72, 144, BLUE)])


async def test_a_three_page_pdf_is_one_task_with_pages_in_order_and_moving_progress() -> None:
    engine = FakeEngine(batch_latency=0.25)
    async with running_app(settings(batch_size=1), engine) as client:
        response = await upload(client, three_page_pdf(), filename="report.pdf", prompt="Free OCR.")
        assert response.status_code == 202
        task_id = response.json()["task_id"]
        seen_progress = set()
        while True:
            task = (await client.get(f"/ocr/{task_id}")).json()
            seen_progress.add(task["progress"]["pages_done"])
            if task["status"] == "completed":
                break
            await asyncio.sleep(0.05)
    assert task["progress"] == {"pages_done": 3, "pages_total": 3}
    assert {1, 2} & seen_progress, f"progress never moved while running: {seen_progress}"
    sizes = [page["markdown"].split("size=")[1] for page in task["pages"]]
    assert sizes == ["144x144", "288x144", "144x288"]
    assert [page["page"] for page in task["pages"]] == [1, 2, 3]
    assert task["result"] == SEPARATOR.join(page["markdown"] for page in task["pages"])
    assert task["result"].count("<--- Page Split --->") == 2
    assert engine.batches_seen == [1, 1, 1]


async def test_pdf_page_cap_is_a_4xx_naming_the_limit() -> None:
    async with running_app(settings(max_pdf_pages=2)) as client:
        response = await upload(client, three_page_pdf(), filename="long.pdf")
        assert response.status_code == 422
        assert "2" in response.json()["detail"]
        assert (await client.get("/stats")).json()["total"] == 0


async def test_exif_rotated_scan_is_read_upright() -> None:
    scan = Image.new("RGB", (300, 200), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    buffer = io.BytesIO()
    scan.save(buffer, "JPEG", exif=exif)
    async with running_app(settings()) as client:
        task_id = (await upload(client, buffer.getvalue(), filename="scan.jpg", prompt="Free OCR.")).json()["task_id"]
        task = await wait_for_task(client, task_id)
    assert task["result"].endswith("size=200x300")


async def test_multi_frame_tiff_gives_one_page_per_frame() -> None:
    frames = [solid_image(seed) for seed in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "TIFF", save_all=True, append_images=frames[1:])
    async with running_app(settings()) as client:
        task_id = (await upload(client, buffer.getvalue(), filename="fax.tif", prompt="Free OCR.")).json()["task_id"]
        task = await wait_for_task(client, task_id)
    assert task["progress"]["pages_total"] == 3
    for frame, page in zip(frames, task["pages"], strict=True):
        assert hashlib.sha256(frame.tobytes()).hexdigest() in page["markdown"]


async def test_grounded_output_becomes_clean_markdown_and_pixel_boxes() -> None:
    async with running_app(settings()) as client:  # the default prompt asks for grounding
        page = Image.new("RGB", (999 * 2, 999), "white")
        task_id = (await upload(client, encode(page))).json()["task_id"]
        task = await wait_for_task(client, task_id)
    markdown = task["pages"][0]["markdown"]
    assert "<|" not in markdown and "|>" not in markdown
    assert markdown.startswith("# Fake page 1998x999")
    assert "fake-ocr sha256=" in markdown
    blocks = task["pages"][0]["blocks"]
    assert [block["label"] for block in blocks] == ["title", "text", "image"]
    assert blocks[0]["bbox"] == [200.0, 40.0, 1800.0, 110.0]  # [[100, 40, 900, 110]] on the 0..999 grid
    assert blocks[1]["bbox"] == [200.0, 150.0, 1800.0, 800.0]
    assert blocks[2]["bbox"] == [500.0, 820.0, 1500.0, 960.0]
    assert markdown.endswith("![](images/page-1-1.png)")  # the image region, fetchable as a crop
    assert (task["pages"][0]["width"], task["pages"][0]["height"]) == (1998, 999)


async def test_a_page_that_hit_max_tokens_is_flagged_never_silently_clean() -> None:
    async with running_app(settings()) as client:
        task_id = (await upload(client, encode(solid_image(1)), prompt="Free OCR.", max_tokens=2)).json()["task_id"]
        task = await wait_for_task(client, task_id)
    assert task["status"] == "completed"
    assert task["pages"][0]["truncated"] is True and task["pages"][0]["finish_reason"] == "length"
    assert "max_tokens" in task["warnings"][0]


async def test_every_bad_document_is_a_clean_4xx_and_the_service_keeps_serving() -> None:
    good = encode(solid_image(7))
    jpeg_named_png = encode(solid_image(8), "JPEG")
    bad_documents = {
        "empty": b"",
        "not an image": b"Hello, this is a text file, not a scan.\n" * 10,
        "html": b"<!doctype html><html><body>nope</body></html>",
        "truncated png": good[: len(good) // 2],
        "pixel bomb": png_header_only(30_000, 30_000),
        "corrupt pdf": b"%PDF-1.7\n" + b"\x00garbage" * 50,
        "encrypted pdf": make_pdf([(100, 100, RED)], encrypt=True),
        "pdf with no pages": make_pdf([]),
    }
    async with running_app(settings(max_image_pixels=10_000_000, max_image_size_mb=1)) as client:
        for name, data in bad_documents.items():
            response = await upload(client, data, filename="upload.png")
            assert 400 <= response.status_code < 500, (name, response.status_code, response.text)
            assert response.json()["detail"], name
        oversized = await upload(client, b"\x89PNG" + b"\x00" * (2 * 1024 * 1024))
        assert oversized.status_code == 413 and oversized.json()["detail"]
        assert (await client.get("/stats")).json()["total"] == 0  # nothing was created

        liar = (await upload(client, jpeg_named_png, filename="scan.png", prompt="Free OCR.")).json()["task_id"]
        after = (await upload(client, good, prompt="Free OCR.")).json()["task_id"]
        assert (await wait_for_task(client, liar))["status"] == "completed"
        assert (await wait_for_task(client, after))["status"] == "completed"


async def test_bad_documents_by_url_fail_their_task_with_the_reason() -> None:
    files = {"/bomb.png": png_header_only(30_000, 30_000), "/locked.pdf": make_pdf([(99, 99, RED)], encrypt=True)}
    with file_server(files) as base:
        async with running_app(settings(max_image_pixels=10_000_000)) as client:
            ids = [(await client.post("/ocr/url", json={"url": f"{base}{path}"})).json()["task_id"] for path in files]
            tasks = [await wait_for_task(client, task_id) for task_id in ids]
    assert [task["status"] for task in tasks] == ["failed", "failed"]
    assert "pixel" in tasks[0]["error"].lower() and "encrypted" in tasks[1]["error"].lower()


async def test_seed_000_sync_batch_answers_one_string_per_input() -> None:
    files = {"/a.png": encode(solid_image(1)), "/b.pdf": three_page_pdf()}
    with file_server(files) as base:
        async with running_app(settings()) as client:
            response = await client.post(
                "/ocr_batch", json={"input": {"images": [f"{base}/a.png"], "pdfs": [f"{base}/b.pdf"]}}
            )
    assert response.status_code == 200
    body = response.json()
    assert len(body["output"]) == 2 and len(body["task_ids"]) == 2
    assert hashlib.sha256(solid_image(1).tobytes()).hexdigest() in body["output"][0]
    assert body["output"][1].count("<--- Page Split --->") == 2
    assert body["errors"] == [None, None]


async def test_seed_000_sync_batch_answers_400_like_the_seed_when_an_input_fails() -> None:
    files = {"/a.png": encode(solid_image(1)), "/b.pdf": three_page_pdf()}
    with file_server(files) as base:
        async with running_app(settings()) as client:
            missing = await client.post(
                "/ocr_batch", json={"input": {"images": [f"{base}/a.png", f"{base}/gone.png"]}}
            )
            not_pdf = await client.post("/ocr_batch", json={"input": {"pdfs": [f"{base}/a.png"]}})
            empty = await client.post("/ocr_batch", json={"input": {}})
            done = await wait_for_task(client, missing.json()["task_ids"][0])
    assert missing.status_code == 400 and "404" in missing.json()["detail"]
    assert missing.json()["errors"][0] is None and "404" in missing.json()["errors"][1]
    assert done["status"] == "completed"  # the input that was read is still there to poll
    assert not_pdf.status_code == 400 and not_pdf.json()["detail"] == f"Provided file is not a PDF: {base}/a.png"
    assert empty.status_code == 400 and "Either 'images' or 'pdfs'" in empty.json()["detail"]


async def test_seed_000_sync_batch_past_its_wait_limit_is_504_and_loses_nothing() -> None:
    engine = FakeEngine(batch_latency=0.6)
    with file_server({"/a.png": encode(solid_image(2))}) as base:
        async with running_app(settings(sync_timeout=0.2), engine) as client:
            response = await client.post("/ocr_batch", json={"input": {"images": [f"{base}/a.png"]}})
            assert response.status_code == 504
            body = response.json()
            assert "OCR_SYNC_TIMEOUT" in body["detail"]
            task = await wait_for_task(client, body["task_ids"][0])
    assert task["status"] == "completed"


async def test_long_poll_returns_as_soon_as_the_task_ends() -> None:
    engine = FakeEngine(batch_latency=0.3)
    async with running_app(settings(), engine) as client:
        task_id = (await upload(client, encode(solid_image(4)))).json()["task_id"]
        task = (await client.get(f"/ocr/{task_id}", params={"wait": 10})).json()
        assert task["status"] == "completed"
        slow_id = (await upload(client, encode(solid_image(5)))).json()["task_id"]
        waited = (await client.get(f"/ocr/{slow_id}", params={"wait": 0.05})).json()
        assert waited["status"] in {"pending", "processing"}
        assert (await client.get(f"/ocr/{slow_id}", params={"wait": -1})).status_code == 422


async def test_upload_limit_is_enforced_while_the_body_streams_in() -> None:
    sent = 0

    async def endless_multipart():  # no Content-Length: the server must count as it reads
        nonlocal sent
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'
        for _ in range(64):
            sent += 64 * 1024
            yield b"\x00" * 64 * 1024

    async with running_app(settings(max_image_size_mb=1)) as client:
        response = await client.post(
            "/ocr", content=endless_multipart(), headers={"content-type": "multipart/form-data; boundary=b"}
        )
        assert response.status_code == 413
        assert "OCR_MAX_IMAGE_SIZE_MB" in response.json()["detail"]
        assert (await client.get("/stats")).json()["total"] == 0
