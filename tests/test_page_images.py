"""Page images and figure crops over HTTP: sizes, crops, caching headers, eviction, access."""

from __future__ import annotations

import io
import time

import numpy as np
from PIL import Image

from ocr_service.engines.fake import FakeEngine
from ocr_service.output.page_images import crop_box
from tests.files import make_pdf
from tests.helpers import encode, running_app, running_services, settings, text_page, upload, wait_for_task

MB = 1024 * 1024


def photo(size: tuple[int, int] = (640, 480), seed: int = 0) -> Image.Image:
    """A noisy gradient: many colours, like a photo or a scan."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, size[0])
    y = np.linspace(0, 255, size[1])
    base = np.stack([np.add.outer(y, x) / 2, np.add.outer(y * 0.3, x * 0.7), np.add.outer(y, -x) % 255], -1)
    return Image.fromarray((base + rng.normal(0, 12, base.shape)).clip(0, 255).astype("uint8"))


def decode(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


async def test_page_images_have_the_pages_pixel_size_and_never_change() -> None:
    pdf = make_pdf([(200, 300, (250, 250, 250)), (300, 150, (20, 40, 200))])
    async with running_app(settings()) as client:
        task = await wait_for_task(client, (await upload(client, pdf, filename="two.pdf")).json()["task_id"])
        responses = [await client.get(f"/ocr/{task['task_id']}/pages/{n}/image") for n in (1, 2)]

    for page, response in zip(task["pages"], responses, strict=True):
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/png"  # flat pages are PNG
        assert "immutable" in response.headers["cache-control"] and "private" in response.headers["cache-control"]
        assert decode(response.content).size == (page["width"], page["height"])
    assert [(p["width"], p["height"]) for p in task["pages"]] == [(400, 600), (600, 300)]


async def test_a_photo_is_served_as_jpeg_at_its_size() -> None:
    async with running_app(settings()) as client:
        task = await wait_for_task(client, (await upload(client, encode(photo(), "JPEG"))).json()["task_id"])
        response = await client.get(f"/ocr/{task['task_id']}/pages/1/image")
    assert response.headers["content-type"] == "image/jpeg"
    assert decode(response.content).size == (task["pages"][0]["width"], task["pages"][0]["height"]) == (640, 480)


async def test_the_markdowns_figure_link_resolves_to_the_crop_of_its_box() -> None:
    page = photo((800, 1000), seed=5)
    async with running_app(settings()) as client:  # the default prompt asks for grounding
        task = await wait_for_task(client, (await upload(client, encode(page))).json()["task_id"])
        result = task["pages"][0]
        assert "![](images/page-1-1.png)" in result["markdown"]
        crop = await client.get(f"/ocr/{task['task_id']}/images/page-1-1.png")
        no_second = await client.get(f"/ocr/{task['task_id']}/images/page-1-2.png")

    image_blocks = [block for block in result["blocks"] if block["label"] == "image"]
    assert len(image_blocks) == 1
    box = crop_box(tuple(image_blocks[0]["bbox"]), 800, 1000)
    assert crop.status_code == 200 and crop.headers["content-type"] == "image/png"
    cropped = decode(crop.content)
    assert cropped.size == (box[2] - box[0], box[3] - box[1])
    assert cropped.convert("RGB").tobytes() == page.crop(box).tobytes()  # exactly those pixels
    assert no_second.status_code == 404 and "1 image region" in no_second.json()["detail"]


async def test_unknown_pages_are_404_and_bad_numbers_422() -> None:
    async with running_app(settings()) as client:
        task_id = (await upload(client, encode(text_page(["one page"], size=(300, 200))))).json()["task_id"]
        await wait_for_task(client, task_id)
        beyond = await client.get(f"/ocr/{task_id}/pages/2/image")
        zero = await client.get(f"/ocr/{task_id}/pages/0/image")
        word = await client.get(f"/ocr/{task_id}/pages/two/image")
        unknown_task = await client.get("/ocr/no-such-task/pages/1/image")
        unknown_crop = await client.get(f"/ocr/{task_id}/images/page-2-1.png")

    assert beyond.status_code == 404 and "no page 2" in beyond.json()["detail"]
    assert zero.status_code == 422 and word.status_code == 422
    assert unknown_task.status_code == 404 and unknown_crop.status_code == 404


async def test_a_waiting_tasks_pages_can_be_seen_before_they_are_read() -> None:
    engine = FakeEngine(batch_latency=1.0)
    async with running_app(settings(batch_size=1), engine) as client:
        await upload(client, encode(text_page(["first"], size=(300, 200))))
        waiting = (await upload(client, encode(text_page(["second"], size=(320, 240))))).json()["task_id"]
        assert (await client.get(f"/ocr/{waiting}")).json()["status"] == "pending"
        response = await client.get(f"/ocr/{waiting}/pages/1/image")
        crop = await client.get(f"/ocr/{waiting}/images/page-1-1.png")  # no result yet: no regions
    assert response.status_code == 200 and decode(response.content).size == (320, 240)
    assert crop.status_code == 404 and "no result yet" in crop.json()["detail"]


async def test_the_oldest_document_is_evicted_past_the_budget_and_answers_410() -> None:
    first, second = encode(photo(seed=1)), encode(photo(seed=2))  # about 1 MB each as PNG
    budget_mb = (max(len(first), len(second)) + 1000) / MB  # room for one of them
    async with running_app(settings(keep_documents_mb=budget_mb)) as client:
        old = (await upload(client, first)).json()["task_id"]
        await wait_for_task(client, old)
        assert (await client.get(f"/ocr/{old}/pages/1/image")).status_code == 200
        new = (await upload(client, second)).json()["task_id"]
        await wait_for_task(client, new)
        gone = await client.get(f"/ocr/{old}/pages/1/image")
        gone_crop = await client.get(f"/ocr/{old}/images/page-1-1.png")
        kept = await client.get(f"/ocr/{new}/pages/1/image")
        still_there = await client.get(f"/ocr/{old}")
        stats = (await client.get("/stats")).json()
        metrics = (await client.get("/metrics")).text

    assert gone.status_code == 410 and gone_crop.status_code == 410
    assert "OCR_KEEP_DOCUMENTS_MB" in gone.json()["detail"] and "raise" in gone.json()["detail"]
    assert kept.status_code == 200
    assert still_there.json()["status"] == "completed"  # the result itself stays
    assert (stats["documents_kept"], stats["documents_kept_bytes"], stats["documents_evicted"]) == (1, len(second), 1)
    assert f"ocr_documents_kept_bytes {float(len(second))}" in metrics and "ocr_documents_evicted_total 1.0" in metrics


async def test_keeping_no_documents_answers_410_once_the_task_ended() -> None:
    async with running_app(settings(keep_documents_mb=0)) as client:
        task_id = (await upload(client, encode(text_page(["x"], size=(200, 200))))).json()["task_id"]
        await wait_for_task(client, task_id)
        response = await client.get(f"/ocr/{task_id}/pages/1/image")
    assert response.status_code == 410 and "OCR_KEEP_DOCUMENTS_MB=0" in response.json()["detail"]


async def test_an_expired_task_takes_its_document_with_it() -> None:
    async with running_app(settings(task_ttl=60)) as client:
        task_id = (await upload(client, encode(text_page(["x"], size=(200, 200))))).json()["task_id"]
        await wait_for_task(client, task_id)
        services = running_services(client)
        assert services.ledger.keeper.stats().documents == 1
        await services.ledger.expire(now=time.time() + 120)
        response = await client.get(f"/ocr/{task_id}/pages/1/image")
    assert response.status_code == 404
    assert services.ledger.keeper.stats().documents == 0 and services.ledger.keeper.stats().bytes == 0


async def test_another_keys_page_image_is_404() -> None:
    async with running_app(settings(api_keys="alice-key,bob-key")) as client:
        alice, bob = {"X-API-Key": "alice-key"}, {"X-API-Key": "bob-key"}
        response = await client.post("/ocr", files={"file": ("a.png", encode(photo()))}, headers=alice)
        task_id = response.json()["task_id"]
        await client.get(f"/ocr/{task_id}?wait=10", headers=alice)
        as_bob = await client.get(f"/ocr/{task_id}/pages/1/image", headers=bob)
        as_bob_crop = await client.get(f"/ocr/{task_id}/images/page-1-1.png", headers=bob)
        anonymous = await client.get(f"/ocr/{task_id}/pages/1/image")
        as_alice = await client.get(f"/ocr/{task_id}/pages/1/image", headers=alice)
    assert as_bob.status_code == 404 and as_bob_crop.status_code == 404
    assert anonymous.status_code == 401
    assert as_alice.status_code == 200


async def test_openapi_lists_the_image_routes_and_info() -> None:
    async with running_app(settings()) as client:
        paths = (await client.get("/openapi.json")).json()["paths"]
        info = (await client.get("/info")).json()
    page = paths["/ocr/{task_id}/pages/{page}/image"]["get"]["responses"]
    assert {"image/png", "image/jpeg"} <= set(page["200"]["content"]) and "410" in page
    crop = paths["/ocr/{task_id}/images/page-{page}-{image}.png"]["get"]["responses"]
    assert "image/png" in crop["200"]["content"] and "410" in crop
    assert "/info" in paths
    assert info["engine"] == "fake" and info["api_keys"] is False and info["resolution_mode"] is None
    assert info["prompts"]["free"] == "<image>\nFree OCR." and info["default_max_tokens"] == 8192
