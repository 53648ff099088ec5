#!/usr/bin/env python
"""The slow attacks, by hand: each against a fresh `run_service.py` on loopback, with what it
must (and must not) do to the service. The fast ones run in CI (`tests/attacks/`).

    python bench/attacks.py idle-sockets [--sockets 21000]
    python bench/attacks.py task-flood [--seconds 20]
    python bench/attacks.py slow-bodies [--connections 300]
    python bench/attacks.py pdf-bomb [--operators 100000]

idle-sockets   One client opens thousands of connections and sends nothing. The service
               must cut all but its per-client share at once and the rest after the
               header timeout, keep answering /health to another client, and never
               come near its file limit.
task-flood     One client posts URL batches of private addresses (each fails at once)
               as fast as it can. Its stored tasks must stop at its quota (429), the
               service's memory must stop growing with them, /stats must stay fast.
slow-bodies    Many uploads that send their body a byte every few seconds. Each must be
               cut off (408) after the body timeout; the service keeps serving.
pdf-bomb       A small PDF whose page repeats a full-page fill `--operators` times. Its
               page must fail alone within the decode budget while another upload
               completes and /health answers.
Each prints one JSON line with what it measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import harness
from bench.pages import a4_text_page, encode_png


def raise_file_limit(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, max(soft, wanted))
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def health_ms(url: str, source: str = "127.0.0.2") -> float | None:
    """Time of one /health from another client address (None if it failed)."""
    started = time.perf_counter()
    try:
        with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=5) as client:
            ok = client.get(f"{url}/health").status_code == 200
    except httpx.HTTPError:
        return None
    return round((time.perf_counter() - started) * 1000, 1) if ok else None


def idle_sockets(args: argparse.Namespace) -> dict[str, Any]:
    limit = raise_file_limit(args.sockets + 1000)
    with harness.service_process({"engine": "fake", "request_header_timeout": 10}) as service:
        host, port = service.base_url.removeprefix("http://").split(":")
        opened, refused = [], 0
        for _ in range(args.sockets):
            try:
                opened.append(socket.create_connection((host, int(port)), timeout=2))
            except OSError:
                refused += 1
        time.sleep(1)
        health_during = [health_ms(service.base_url) for _ in range(5)]
        open_fds = len(os.listdir(f"/proc/{service.process.pid}/fd"))
        time.sleep(11)
        open_fds_after = len(os.listdir(f"/proc/{service.process.pid}/fd"))
        for sock in opened:
            sock.close()
    return {
        "attack": "idle-sockets", "sockets": args.sockets, "client_file_limit": limit, "connect_refused": refused,
        "service_fds_while_held": open_fds, "service_fds_after_header_timeout": open_fds_after,
        "health_ms_during": health_during,
    }


def task_flood(args: argparse.Namespace) -> dict[str, Any]:
    urls = [f"http://10.0.0.{n % 250}/x.png" for n in range(100)]
    with harness.service_process({"engine": "fake", "allow_private_urls": False}) as service:
        rss_before = service.rss_mb()
        accepted = refused = 0
        stats_ms: list[float] = []
        deadline = time.monotonic() + args.seconds
        with httpx.Client(base_url=service.base_url, timeout=10) as client:
            while time.monotonic() < deadline:
                code = client.post("/ocr/url/batch", json={"urls": urls}).status_code
                accepted += code == 202
                refused += code == 429
                if (accepted + refused) % 50 == 0:
                    started = time.perf_counter()
                    client.get("/stats")
                    stats_ms.append((time.perf_counter() - started) * 1000)
            stats = client.get("/stats").json()
        rss_after = service.rss_mb()
    return {
        "attack": "task-flood", "seconds": args.seconds, "batches_accepted": accepted, "batches_refused_429": refused,
        "tasks_held": stats["total"], "rss_mb_before": round(rss_before, 1), "rss_mb_after": round(rss_after, 1),
        "stats_ms_median": round(statistics.median(stats_ms), 1) if stats_ms else None,
    }


async def _slow_upload(url: str, seconds: float) -> int:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /ocr HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                 b"Content-Length: 100000\r\n\r\n--b\r\n")
    await writer.drain()
    deadline = time.monotonic() + seconds
    with_status = 0
    while time.monotonic() < deadline:
        try:
            answer = await asyncio.wait_for(reader.read(64), 3)
        except TimeoutError:
            writer.write(b"x")
            continue
        if answer.startswith(b"HTTP/1.1 "):
            with_status = int(answer[9:12])
        break
    writer.close()
    return with_status


def slow_bodies(args: argparse.Namespace) -> dict[str, Any]:
    raise_file_limit(args.connections + 1000)
    with harness.service_process({"engine": "fake", "body_timeout": 10, "max_connections_per_client": 1000}) as service:

        async def run() -> list[int]:
            return await asyncio.gather(*(_slow_upload(service.base_url, 60) for _ in range(args.connections)))

        started = time.monotonic()
        codes = asyncio.run(run())
        health = health_ms(service.base_url)
    return {
        "attack": "slow-bodies", "connections": args.connections, "answers": {str(c): codes.count(c) for c in set(codes)},
        "seconds": round(time.monotonic() - started, 1), "health_ms_after": health,
    }


def bomb_pdf(operators: int) -> bytes:
    """One 200x200-inch page whose content repeats a full-page fill."""
    content = b"0 0 14400 14400 re f\n" * operators
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 14400 14400] /Contents 4 0 R >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content),
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def pdf_bomb(args: argparse.Namespace) -> dict[str, Any]:
    bomb = bomb_pdf(args.operators)
    page = encode_png(a4_text_page(1))
    with harness.service_process({"engine": "fake"}) as service, httpx.Client(base_url=service.base_url, timeout=120) as client:
        started = time.monotonic()
        posted = client.post("/ocr", files={"file": ("bomb.pdf", bomb, "application/pdf")})
        post_s = time.monotonic() - started
        other = client.post("/ocr", files={"file": ("page.png", page, "image/png")}).json()["task_id"]
        other_done = client.get(f"/ocr/{other}", params={"wait": 60}).json()
        other_s = time.monotonic() - started
        health = health_ms(service.base_url)
        bomb_task = None
        if posted.status_code == 202:
            bomb_task = client.get(f"/ocr/{posted.json()['task_id']}", params={"wait": 60}).json()
        peak = vm_hwm_mb(service.process.pid)
    return {
        "attack": "pdf-bomb", "bytes": len(bomb), "operators": args.operators, "post_status": posted.status_code,
        "post_s": round(post_s, 2), "other_status": other_done["status"], "other_done_after_s": round(other_s, 2),
        "health_ms": health, "bomb_status": bomb_task and bomb_task["status"],
        "bomb_error": bomb_task and bomb_task.get("error"), "service_peak_rss_mb": round(peak, 1),
    }


ATTACKS = {"idle-sockets": idle_sockets, "task-flood": task_flood, "slow-bodies": slow_bodies, "pdf-bomb": pdf_bomb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("attack", choices=sorted(ATTACKS))
    parser.add_argument("--sockets", type=int, default=21000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--operators", type=int, default=100_000)
    args = parser.parse_args()
    print(json.dumps(ATTACKS[args.attack](args)))


if __name__ == "__main__":
    main()
