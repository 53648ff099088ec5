"""GET /ocr/{id}/events: pages as they finish, progress, the end event, resuming, access."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import uvicorn

from ocr_service.app import create_app
from ocr_service.config import Settings
from ocr_service.engines.base import Engine
from ocr_service.engines.fake import FAIL_MARKER, FakeEngine
from tests.files import make_pdf
from tests.helpers import encode, free_port, running_app, running_services, settings, solid_image, upload, wait_for_task

THREE_PAGES = make_pdf([(200, 300, (255, 0, 0)), (200, 300, (0, 255, 0)), (200, 300, (0, 0, 255))])


@dataclass
class Event:
    event: str
    id: str | None
    data: dict


def parse_events(text: str) -> list[Event]:
    """SSE wire text -> events (comments and keep-alives skipped)."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, list[str]] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields.setdefault(name, []).append(value.removeprefix(" "))
        if "data" in fields:
            events.append(Event(fields.get("event", ["message"])[0], fields.get("id", [None])[0], json.loads("\n".join(fields["data"]))))
    return events


async def stream(client: httpx.AsyncClient, task_id: str, **headers: str) -> list[Event]:
    response = await client.get(f"/ocr/{task_id}/events", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return parse_events(response.text)


async def test_pages_arrive_in_order_with_progress_and_the_stream_ends_with_done() -> None:
    async with running_app(settings(batch_size=1)) as client:
        task_id = (await upload(client, THREE_PAGES, filename="three.pdf")).json()["task_id"]
        events = await stream(client, task_id)
        polled = (await client.get(f"/ocr/{task_id}")).json()

    assert events[0].event == "progress" and events[0].data["task_id"] == task_id
    pages = [e for e in events if e.event == "page"]
    assert [e.id for e in pages] == ["1", "2", "3"]
    assert [e.data["page"] for e in pages] == [1, 2, 3]  # one page per batch: they finish in order
    for event in pages:
        assert set(event.data) == {"page", "markdown", "blocks", "finish_reason", "truncated", "width", "height"}
        assert event.data["width"] == 400 and event.data["height"] == 600  # 200x300 pt at 144 dpi
        assert "fake-ocr sha256=" in event.data["markdown"]
    progress = [e.data for e in events if e.event == "progress"]
    assert [p["pages_done"] for p in progress] == sorted(p["pages_done"] for p in progress)
    assert len({json.dumps(p, sort_keys=True) for p in progress}) == len(progress)  # coalesced: no repeats
    assert progress[-1] == {"task_id": task_id, "status": "completed", "pages_done": 3, "pages_total": 3}
    assert events[-1].event == "done"
    assert events[-1].data == polled  # the same JSON as GET /ocr/{id}
    assert [p["page"] for p in polled["pages"]] == [1, 2, 3]


async def test_last_event_id_resumes_after_that_page_without_repeats() -> None:
    async with running_app(settings(batch_size=1)) as client:
        task_id = (await upload(client, THREE_PAGES, filename="three.pdf")).json()["task_id"]
        await wait_for_task(client, task_id)
        after_two = await stream(client, task_id, **{"Last-Event-ID": "2"})
        after_all = await stream(client, task_id, **{"Last-Event-ID": "3"})
        bad = await client.get(f"/ocr/{task_id}/events", headers={"Last-Event-ID": "two"})

    assert [(e.event, e.id) for e in after_two if e.event == "page"] == [("page", "3")]
    assert after_two[-1].event == "done"
    assert [e.event for e in after_all] == ["progress", "done"]
    assert bad.status_code == 422 and "detail" in bad.json()


async def test_a_failed_task_streams_its_failed_event_and_ends() -> None:
    async with running_app(settings()) as client:
        response = await upload(client, encode(solid_image(3)), prompt=f"Free OCR. {FAIL_MARKER}")
        task_id = response.json()["task_id"]
        events = await stream(client, task_id)

    assert events[-1].event == "failed"
    assert events[-1].data["status"] == "failed" and FAIL_MARKER in events[-1].data["error"]
    assert not [e for e in events if e.event == "page"]


async def test_a_waiting_task_shows_its_queue_position_and_ends_cancelled() -> None:
    engine = FakeEngine(batch_latency=0.5)
    async with running_app(settings(batch_size=1), engine) as client:
        first = (await upload(client, encode(solid_image(1)), prompt="Free OCR.")).json()["task_id"]
        second = (await upload(client, encode(solid_image(2)), prompt="Free OCR.")).json()["task_id"]
        listening = asyncio.create_task(stream(client, second))
        await asyncio.sleep(0.2)  # the stream has sent its first progress event
        cancelled = await client.delete(f"/ocr/{second}")
        events = await listening
        await wait_for_task(client, first)

    assert cancelled.status_code == 200
    first_progress = events[0].data
    assert events[0].event == "progress" and first_progress["status"] == "pending"
    assert first_progress["queue_position"] == 0
    assert events[-1].event == "cancelled" and events[-1].data["status"] == "cancelled"


async def test_another_keys_task_is_404_and_no_key_is_401() -> None:
    async with running_app(settings(api_keys="alice-key,bob-key")) as client:
        alice = {"X-API-Key": "alice-key"}
        response = await client.post("/ocr", files={"file": ("a.png", encode(solid_image(1)))}, headers=alice)
        task_id = response.json()["task_id"]
        await asyncio.sleep(0.2)
        as_bob = await client.get(f"/ocr/{task_id}/events", headers={"X-API-Key": "bob-key"})
        anonymous = await client.get(f"/ocr/{task_id}/events")
        as_alice = await client.get(f"/ocr/{task_id}/events", headers=alice)

    assert as_bob.status_code == 404 and "not found" in as_bob.json()["detail"]
    assert anonymous.status_code == 401
    assert as_alice.status_code == 200 and parse_events(as_alice.text)[-1].event == "done"


async def test_streams_past_the_limit_answer_503_and_ended_streams_free_their_slot() -> None:
    async with running_app(settings()) as client:
        task_id = (await upload(client, encode(solid_image(1)))).json()["task_id"]
        await wait_for_task(client, task_id)
        slots = running_services(client).event_streams
        await stream(client, task_id)
        assert slots.taken == 0  # the slot went back when the stream ended
        slots.limit = 0
        refused = await client.get(f"/ocr/{task_id}/events")

    assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
    assert "too many open event streams" in refused.json()["detail"]


async def test_openapi_lists_the_event_stream() -> None:
    async with running_app(settings()) as client:
        paths = (await client.get("/openapi.json")).json()["paths"]
    operation = paths["/ocr/{task_id}/events"]["get"]
    assert "text/event-stream" in operation["responses"]["200"]["content"]
    assert {"404", "503"} <= set(operation["responses"])


# -- over a real socket: each page is sent the moment it finishes -----------------------


@contextlib.asynccontextmanager
async def served(app_settings: Settings, engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    """The app behind uvicorn on a loopback port, and a client for it (responses stream)."""
    app = create_app(app_settings, engine)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_config=None))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        assert not serving.done(), "the server did not start"
        await asyncio.sleep(0.02)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.config.port}", timeout=30) as client:
            client.app = app  # type: ignore[attr-defined]  # for running_services
            yield client
    finally:
        server.should_exit = True
        await serving


async def test_each_page_event_arrives_while_later_pages_still_run() -> None:
    engine = FakeEngine(batch_latency=0.4)
    async with served(settings(batch_size=1), engine) as client:
        task_id = (await upload(client, THREE_PAGES, filename="three.pdf")).json()["task_id"]
        seen: list[tuple[str, str]] = []  # (event, task status polled when it arrived)
        async with client.stream("GET", f"/ocr/{task_id}/events") as response:
            text = ""
            async for chunk in response.aiter_text():
                text += chunk
                while "\n\n" in text:
                    block, text = text.split("\n\n", 1)
                    for event in parse_events(block + "\n\n"):
                        status = (await client.get(f"/ocr/{task_id}")).json()["status"]
                        seen.append((event.event, status))

    pages = [status for event, status in seen if event == "page"]
    assert len(pages) == 3
    assert pages[:2] == ["processing", "processing"]  # pages 1 and 2 came while page 3 still ran
    assert seen[-1][0] == "done"


async def test_a_client_that_goes_away_frees_its_stream_slot() -> None:
    engine = FakeEngine(batch_latency=2.0)
    async with served(settings(batch_size=1), engine) as client:
        task_id = (await upload(client, THREE_PAGES, filename="three.pdf")).json()["task_id"]
        slots = running_services(client).event_streams
        async with client.stream("GET", f"/ocr/{task_id}/events") as response:
            async for chunk in response.aiter_text():
                assert "event: progress" in chunk
                break
            assert slots.taken == 1
        for _ in range(100):  # the server notices the closed connection
            if slots.taken == 0:
                break
            await asyncio.sleep(0.05)
        assert slots.taken == 0
