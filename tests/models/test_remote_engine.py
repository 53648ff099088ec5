"""OCR_ENGINE=remote against two real `vllm serve` replicas of a tiny random-weight DeepSeek-OCR.

The replicas start once for the module (about a minute and ~5 GB each; one CPU core
each) and a real service process (`run_service.py`) routes uploads to them. The tests
run in file order: uploads spread over both replicas; a replica killed mid-run loses
no page; a replica that comes back is checked (one without the n-gram guard is kept
out) and used again. Request counts are read from each replica's own Prometheus
`/metrics`, so they do not depend on the router's word.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator

import httpx
import pytest

from ocr_service.engines.remote import chat_request
from tests.helpers import ServiceProcess, encode, free_port, poll_task, service_process, solid_image, text_page
from tests.models.support import VllmReplica, available_memory_gib, needs_vllm, tiny_model

pytestmark = needs_vllm

PROMPT = "<image>\n<|grounding|>Convert the document to markdown."
PER_REPLICA = 2  # OCR_BATCH_SIZE: pages in flight on each replica
MAX_TOKENS = 8  # per page; the guard's canary asks 128, so vLLM's max_tokens histogram tells them apart
NEEDED_GIB = 12  # two replicas at ~5 GB each, and the service


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[VllmReplica, VllmReplica]]:
    if available_memory_gib() < NEEDED_GIB:
        pytest.skip(f"two vllm serve replicas need ~{NEEDED_GIB} GiB free; {available_memory_gib():.1f} GiB is")
    model = tiny_model("deepseek-ocr", tmp_path_factory.mktemp("tiny-ocr"))
    logs = tmp_path_factory.mktemp("replica-logs")
    cores = os.cpu_count() or 1
    pair = tuple(
        VllmReplica(model, free_port(), core=index % cores, log_path=logs / f"replica-{index}.log") for index in range(2)
    )
    started = time.monotonic()
    try:
        for replica in pair:
            replica.start()
        for replica in pair:
            replica.wait_healthy()
        print(f"\nreplicas healthy in {time.monotonic() - started:.0f} s; RSS {[round(r.rss_gib(), 1) for r in pair]} GiB")
        yield pair  # type: ignore[misc]
        print(f"\nreplica RSS at the end: {[round(r.rss_gib(), 1) for r in pair]} GiB")
    finally:
        for replica in pair:
            replica.stop()


@pytest.fixture(scope="module")
def service(replicas: tuple[VllmReplica, VllmReplica], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    env = {
        "OCR_ENGINE": "remote",
        "OCR_REMOTE_URLS": ",".join(replica.url for replica in replicas),
        "OCR_BATCH_SIZE": str(PER_REPLICA),
        "OCR_DEFAULT_MAX_TOKENS": str(MAX_TOKENS),
        "OCR_REMOTE_STARTUP_TIMEOUT": "120",
        "OCR_MAX_QUEUE_SIZE": "200",
    }
    with service_process(tmp_path_factory.mktemp("service"), env, start_timeout=180) as running:
        yield running


def upload_pages(url: str, count: int, seed: int = 0) -> list[str]:
    """`count` single-page uploads, each a different small page; their task ids."""
    ids = []
    for index in range(count):
        page = encode(text_page([f"Page {seed + index}", "Total 12.50"], size=(320, 240), font_size=24))
        response = httpx.post(f"{url}/ocr", files={"file": ("page.png", page, "image/png")}, timeout=30)
        assert response.status_code == 202, response.text
        ids.append(response.json()["task_id"])
    return ids


def pages_served(replica: VllmReplica) -> int:
    """Pages the replica has answered since it started (not the canary's requests)."""
    return replica.requests_with_max_tokens_up_to(10)


def wait_all(url: str, ids: list[str], timeout: float = 900) -> list[dict]:
    deadline = time.monotonic() + timeout
    return [poll_task(url, task_id, timeout=max(1.0, deadline - time.monotonic())) for task_id in ids]


def wait_for_log(service: ServiceProcess, text: str, count: int, timeout: float) -> None:
    """Until the service log holds `text` at least `count` times."""
    deadline = time.monotonic() + timeout
    while service.log_path.read_text().count(text) < count:
        assert time.monotonic() < deadline, f"{text!r} not logged {count} times:\n{service.log_path.read_text()[-3000:]}"
        time.sleep(0.5)


def test_the_chat_message_renders_as_the_plain_deepseek_prompt(replicas: tuple[VllmReplica, VllmReplica]) -> None:
    """What the engine sends (image part, text part without `<image>`) is the recipe's plain prompt."""
    replica = replicas[0]
    model = httpx.get(f"{replica.url}/v1/models", timeout=10).json()["data"][0]["id"]
    image = "data:image/png;base64," + base64.b64encode(encode(solid_image(1))).decode()
    body = chat_request(
        model=model, prompt=PROMPT, image_uri=image, temperature=0, max_tokens=8,
        ngram_size=30, window_size=90, table_cell_ids=(1, 2),
    )  # fmt: skip
    chat = httpx.post(f"{replica.url}/tokenize", json={"model": model, "messages": body["messages"]}, timeout=60).json()
    plain = httpx.post(f"{replica.url}/tokenize", json={"model": model, "prompt": PROMPT}, timeout=60).json()
    image_id = plain["tokens"][1]  # BOS, then the one <image> placeholder
    collapsed = [t for i, t in enumerate(chat["tokens"]) if not (t == image_id and chat["tokens"][i - 1] == image_id)]
    assert collapsed == plain["tokens"]
    assert chat["count"] > 100  # the placeholder grew into the page's image tokens


def test_uploads_spread_over_both_replicas(replicas: tuple[VllmReplica, VllmReplica], service: ServiceProcess) -> None:
    before = [pages_served(replica) for replica in replicas]
    started = time.monotonic()
    ids = upload_pages(service.url, 16)
    done = wait_all(service.url, ids)
    elapsed = time.monotonic() - started
    assert [task["status"] for task in done] == ["completed"] * 16, [t for t in done if t["status"] != "completed"]
    assert all(task["pages"][0]["finish_reason"] in ("stop", "length") for task in done)
    served = [pages_served(replica) - count for replica, count in zip(replicas, before, strict=True)]
    print(f"\n16 pages in {elapsed:.0f} s; per replica {served}")
    assert sum(served) == 16
    assert 0.4 <= served[0] / 16 <= 0.6, served
    log = service.log_path.read_text()
    # Each replica told the engine its own <td>/</td> ids (the tiny tokenizer's, not the published ones).
    assert log.count("<td>/</td> ids (265, 266)") == 2, log[-3000:]
    # And each passed the n-gram guard's canary (random weights loop at once without it).
    assert log.count("3-gram repeats in 128 tokens: 0 with the guard's rule") == 2, log[-3000:]


def test_a_replica_killed_mid_run_loses_no_page(replicas: tuple[VllmReplica, VllmReplica], service: ServiceProcess) -> None:
    survivor, victim = replicas
    before = pages_served(survivor)
    ids = upload_pages(service.url, 12, seed=100)
    deadline = time.monotonic() + 300
    while victim.metric("vllm:num_requests_running") < 1:  # kill it while it holds pages
        assert time.monotonic() < deadline, "the victim never got a page"
        time.sleep(0.2)
    victim.kill()
    done = wait_all(service.url, ids)
    assert [task["status"] for task in done] == ["completed"] * 12, [t for t in done if t["status"] != "completed"]
    # The survivor read the pages the victim had not finished, retried ones included.
    assert pages_served(survivor) - before >= 6
    assert f"replica {victim.url} is down" in service.log_path.read_text()


def test_a_replica_that_comes_back_is_checked_and_used_again(
    replicas: tuple[VllmReplica, VllmReplica], service: ServiceProcess
) -> None:
    _, returning = replicas
    if returning.running:  # the previous test did not run alone: take it down here
        returning.kill()
        wait_for_log(service, f"replica {returning.url} is down", 1, timeout=60)
    # First it comes back without the n-gram guard: the canary keeps it out.
    returning.logits_processors = False
    returning.start()
    returning.wait_healthy()
    wait_for_log(service, "does not apply DeepSeek-OCR's n-gram repetition guard", 1, timeout=300)
    ids = upload_pages(service.url, 4, seed=300)
    assert [task["status"] for task in wait_all(service.url, ids)] == ["completed"] * 4
    assert pages_served(returning) == 0  # healthy, but not one page went to it
    returning.stop()
    # Then as it should be.
    ups_before = service.log_path.read_text().count(f"replica {returning.url} is up")
    returning.logits_processors = True
    returning.start()
    returning.wait_healthy()
    wait_for_log(service, f"replica {returning.url} is up", ups_before + 1, timeout=300)
    ids = upload_pages(service.url, 8, seed=200)
    done = wait_all(service.url, ids)
    assert [task["status"] for task in done] == ["completed"] * 8
    assert pages_served(returning) >= 2  # a fresh process: every count is since it came back
