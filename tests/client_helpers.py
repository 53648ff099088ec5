"""What the client and CLI tests share: a fake-engine service process, pages with known text, metrics."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import ServiceProcess, encode, service_process, solid_image


@contextlib.contextmanager
def fake_service(workdir: Path, **settings: str) -> Iterator[ServiceProcess]:
    """`run_service.py` on the fake engine; `settings` are OCR_* names without the prefix."""
    env = {"OCR_ENGINE": "fake", "OCR_BATCH_TIMEOUT": "0.05", "OCR_ALLOW_PRIVATE_URLS": "true"}
    env.update({f"OCR_{name.upper()}": value for name, value in settings.items()})
    with service_process(workdir, env) as service:
        yield service


def page_png(seed: int) -> bytes:
    return encode(solid_image(seed))


def page_digest(seed: int) -> str:
    """What the fake engine writes for that page: the SHA-256 of its RGB pixels."""
    return hashlib.sha256(solid_image(seed).convert("RGB").tobytes()).hexdigest()


def metric(url: str, name: str, api_key: str | None = None, **labels: str) -> float:
    """The sum of a Prometheus sample's values over the series whose labels match `labels`."""
    headers = {"X-API-Key": api_key} if api_key else {}
    response = httpx.get(f"{url}/metrics", headers=headers, timeout=10)
    response.raise_for_status()
    total = 0.0
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(key) == value for key, value in labels.items()):
                total += sample.value
    return total


def queue_full_rejections(url: str) -> float:
    return metric(url, "ocr_rejections_total", reason="queue_full")
