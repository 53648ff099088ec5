"""`python -m ocr_client` as a user runs it, against a real service process on the fake engine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.client_helpers import fake_service, metric, page_digest, page_png, queue_full_rejections
from tests.helpers import ROOT, ServiceProcess, file_server, free_port


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """Room for 4 waiting pages, 2-page batches of 0.15 s: the CLI at concurrency 8 meets 503s."""
    with fake_service(tmp_path_factory.mktemp("service"), max_queue_size="4", batch_size="2",
                      fake_batch_latency="0.05", fake_item_latency="0.05") as process:
        yield process


def cli_command(server: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "ocr_client", *args, "--server", server]


def cli_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in {"OCR_SERVER_URL", "OCR_API_KEY"}}
    env["PYTHONPATH"] = str(ROOT)
    return env


def run_cli(server: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli_command(server, *args), cwd=cwd, env=cli_env(), capture_output=True, text=True,
                          timeout=300)


def write_scans(folder: Path, seeds: range, subfolders: int = 1) -> dict[Path, int]:
    """PNG pages named after their seed, spread over `subfolders`; returns path -> seed."""
    scans = {}
    for seed in seeds:
        path = folder / f"part{seed % subfolders}" / f"page{seed:03}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(page_png(seed))
        scans[path] = seed
    return scans


def leftovers(folder: Path) -> list[Path]:
    """Temporary files an output write left behind (rglob sees hidden files too)."""
    return [path for path in folder.rglob("*") if path.name.endswith(".part")]


def test_fifty_files_through_a_queue_of_four(service: ServiceProcess, tmp_path: Path) -> None:
    scans = write_scans(tmp_path / "scans", range(50), subfolders=3)
    (tmp_path / "scans" / "notes.txt").write_text("not a scan: the folder search skips it")
    out = tmp_path / "out"
    before = queue_full_rejections(service.url)

    result = run_cli(service.url, str(tmp_path / "scans"), "--out", str(out), "--concurrency", "8", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    outputs = sorted(path for path in out.rglob("*") if path.is_file())
    assert len(outputs) == 50 and not leftovers(out)
    for path, seed in scans.items():
        markdown = (out / path.relative_to(tmp_path / "scans").parent / f"{path.name}.md").read_text()
        assert f"sha256={page_digest(seed)}" in markdown
    absorbed = queue_full_rejections(service.url) - before
    assert absorbed > 0
    assert f"50 written, 0 skipped (output exists), 0 failed; {absorbed:.0f} busy answers (503/429) waited out" \
        in result.stderr


def test_a_corrupt_file_is_reported_and_the_others_written(service: ServiceProcess, tmp_path: Path) -> None:
    scans = write_scans(tmp_path / "scans", range(4))
    corrupt = tmp_path / "scans" / "part0" / "torn.png"
    corrupt.write_bytes(page_png(9)[:60])
    out = tmp_path / "out"

    result = run_cli(service.url, str(tmp_path / "scans"), "--out", str(out), cwd=tmp_path)

    assert result.returncode == 1
    assert "4 written, 0 skipped (output exists), 1 failed" in result.stderr
    failed_section = result.stderr.split("failed:\n", 1)[1]
    assert f"{corrupt}: 422: " in failed_section and "corrupt" in failed_section.lower()
    for path, seed in scans.items():
        assert page_digest(seed) in (out / "part0" / f"{path.name}.md").read_text()
    assert not (out / "part0" / "torn.png.md").exists() and not leftovers(out)


def test_a_second_run_skips_what_the_first_wrote(service: ServiceProcess, tmp_path: Path) -> None:
    scans = write_scans(tmp_path / "scans", range(6))
    out = tmp_path / "out"
    assert run_cli(service.url, str(tmp_path / "scans"), "--out", str(out), cwd=tmp_path).returncode == 0
    outputs = sorted(out.rglob("*.md"))
    assert len(outputs) == len(scans)
    outputs[0].unlink()  # as if the first run had stopped before this one
    kept = {path: path.stat().st_mtime_ns for path in outputs[1:]}
    uploads = {"route": "/ocr", "method": "POST", "status": "202"}
    before = metric(service.url, "ocr_http_requests_total", **uploads)

    result = run_cli(service.url, str(tmp_path / "scans"), "--out", str(out), cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "1 written, 5 skipped (output exists), 0 failed" in result.stderr
    assert metric(service.url, "ocr_http_requests_total", **uploads) - before == 1
    assert outputs[0].exists() and {path: path.stat().st_mtime_ns for path in kept} == kept


def test_urls_and_json_output(service: ServiceProcess, tmp_path: Path) -> None:
    with file_server({"/docs/invoice.png": page_png(41)}) as base:
        url = f"{base}/docs/invoice.png"
        result = run_cli(service.url, url, "--out", str(tmp_path / "out"), "--format", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [output] = (tmp_path / "out").iterdir()
    assert output.name.startswith("invoice.png-") and output.suffix == ".json"
    task = json.loads(output.read_text())
    assert task["status"] == "completed" and task["url"] == url
    assert page_digest(41) in task["pages"][0]["markdown"] and task["pages"][0]["blocks"][0]["label"] == "title"


def test_bad_command_lines_and_an_unreachable_service_exit_2(tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    missing = run_cli(nowhere, str(tmp_path / "no-such-folder"), cwd=tmp_path)
    assert missing.returncode == 2 and "no such file" in missing.stderr
    (tmp_path / "page.png").write_bytes(page_png(1))
    unreachable = run_cli(nowhere, str(tmp_path / "page.png"), "--retry-wait", "1", cwd=tmp_path)
    assert unreachable.returncode == 2 and f"cannot use the service at {nowhere}" in unreachable.stderr


def test_ctrl_c_leaves_whole_outputs_and_gives_back_queue_places(tmp_path: Path) -> None:
    (tmp_path / "service").mkdir()
    with fake_service(tmp_path / "service", max_queue_size="4", batch_size="1",
                      fake_batch_latency="0.3", fake_item_latency="0") as slow:
        scans = write_scans(tmp_path / "scans", range(30))
        out = tmp_path / "out"
        command = cli_command(slow.url, str(tmp_path / "scans"), "--out", str(out), "--format", "json",
                              "--concurrency", "8")
        # Ctrl+C as a terminal sends it, also where the tests themselves run with SIGINT ignored (started in the
        # background by a non-interactive shell, which the child would inherit).
        cli = subprocess.Popen(command, cwd=tmp_path, env=cli_env(), stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            deadline = time.monotonic() + 60
            while True:  # some outputs written, and some of the CLI's tasks waiting in the queue
                stats = httpx.get(f"{slow.url}/stats").json()
                if len(list(out.rglob("*.json"))) >= 3 and stats["pending"] >= 2:
                    break
                assert cli.poll() is None and time.monotonic() < deadline, "the CLI ended before it was interrupted"
                time.sleep(0.05)
            cli.send_signal(signal.SIGINT)
            _, stderr = cli.communicate(timeout=30)
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.wait()
        stats = httpx.get(f"{slow.url}/stats").json()

    assert cli.returncode == 130, stderr
    assert "interrupted:" in stderr
    written = sorted(out.rglob("*.json"))
    assert 3 <= len(written) < len(scans)
    by_name = {path.name: seed for path, seed in scans.items()}
    for path in written:  # each output whole: parseable, completed, its own page's text
        task = json.loads(path.read_text())
        assert task["status"] == "completed"
        assert page_digest(by_name[path.name.removesuffix(".json")]) in task["result"]
    assert not leftovers(out)
    assert stats["tasks_finished"]["cancelled"] >= 1  # the CLI cancelled its waiting tasks
