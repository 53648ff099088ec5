"""`python -m ocr_client`: OCR many files, folders or URLs into one Markdown (or JSON) file each.

Inputs run a few at a time (`--concurrency`); an input whose output exists is skipped,
so a second run resumes where the first stopped. Outputs are written to a temporary
file and renamed, so an interrupted run never leaves a half-written one. The exit status
is 0 when every input was written or skipped, 1 when any failed (each is listed with
the reason), 2 for a bad command line or a service that cannot be used (unreachable, a
wrong API key), 130 after Ctrl+C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

from ocr_client.aio import AsyncOcrClient
from ocr_client.errors import OcrError, TaskFailed
from ocr_client.models import Task
from ocr_client.plan import Job, PlanError, plan
from ocr_client.progress import ProgressReport
from ocr_client.retry import RetryPolicy

CANCEL_GRACE = 5.0  # seconds spent cancelling our waiting tasks after Ctrl+C
PREFLIGHT_WAIT = 10.0  # seconds the first call may retry before the service counts as unreachable
PROGRESS_POLL = 5.0  # seconds each long poll may be held: how often a long document's progress moves


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ocr_client",
        description="OCR images and PDFs (files, folders searched recursively, http(s) URLs) into Markdown.",
    )
    parser.add_argument("inputs", nargs="+", metavar="FILE_OR_DIR_OR_URL")
    parser.add_argument("--out", type=Path, default=Path("ocr-output"), help="output folder (default: ocr-output)")
    parser.add_argument("--format", choices=("md", "json"), default="md",
                        help="md: the Markdown; json: the whole task with pages and layout blocks")
    parser.add_argument("--prompt", help="prompt for every input (default: the server's)")
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--max-tokens", type=int)
    parser.add_argument("--concurrency", type=int, default=4, help="inputs in flight at once (default: 4)")
    parser.add_argument("--server", default=os.environ.get("OCR_SERVER_URL", "http://localhost:8000"),
                        help="service URL (default: $OCR_SERVER_URL or http://localhost:8000)")
    parser.add_argument("--api-key", default=os.environ.get("OCR_API_KEY"),
                        help="API key (default: $OCR_API_KEY; the variable keeps it out of the process list)")
    parser.add_argument("--retry-wait", type=float, default=600.0,
                        help="seconds one request may wait out a busy service or a lost connection (default: 600)")
    parser.add_argument("--force", action="store_true", help="write outputs that exist already")
    args = parser.parse_args(argv)
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    return args


def render(task: Task, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(dataclasses.asdict(task), ensure_ascii=False, indent=2) + "\n"
    return task.result or ""


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename: `path` is whole or absent, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def reason(error: Exception) -> str:
    if isinstance(error, TaskFailed):
        return f"task {error.task.status}: {error.detail}"
    if isinstance(error, OcrError) and error.status_code is not None:
        return f"{error.status_code}: {error.detail}"
    return str(error)


class Run:
    """One command-line run: workers take inputs one by one until none is left."""

    def __init__(self, args: argparse.Namespace, client: AsyncOcrClient, jobs: list[Job]) -> None:
        self.args = args
        self.client = client
        self.jobs = iter(jobs)
        self.progress = ProgressReport(len(jobs), sys.stderr)
        self.failures: dict[str, str] = {}
        self.written = 0
        self.waiting: set[str] = set()  # task ids submitted and not yet ended

    async def worker(self) -> None:
        for job in self.jobs:  # one shared iterator: each input goes to exactly one worker
            try:
                task = await self.convert(job)
                await asyncio.to_thread(write_atomic, job.output, render(task, self.args.format))
            except (OcrError, OSError) as exc:
                self.failures[job.label] = reason(exc)
                self.progress.finished(job.label, f"FAILED {job.label}: {reason(exc)}", ok=False)
            else:
                self.written += 1
                self.progress.finished(job.label, f"ok {job.label} -> {job.output}", ok=True)

    async def convert(self, job: Job) -> Task:
        options = {"prompt": self.args.prompt, "temperature": self.args.temperature, "max_tokens": self.args.max_tokens}
        if isinstance(job.source, str):
            task_id = await self.client.submit_url(job.source, **options)
        else:
            task_id = await self.client.submit(job.source, **options)
        self.waiting.add(task_id)  # left there if the wait is interrupted, for cancel_waiting
        task = await self.client.wait(
            task_id, on_update=lambda t: self.progress.update(job.label, t.progress.pages_done, t.progress.pages_total)
        )
        self.waiting.discard(task_id)
        if not task.ok:
            raise TaskFailed(task)
        return task

    async def cancel_waiting(self) -> None:
        """After Ctrl+C: give our waiting tasks' queue places back (running ones finish on their own)."""

        async def cancel(task_id: str) -> None:
            with contextlib.suppress(OcrError):
                await self.client.cancel(task_id)

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(cancel(task_id) for task_id in list(self.waiting))), CANCEL_GRACE)


async def check_service(args: argparse.Namespace) -> str | None:
    """Why the service cannot be used (unreachable, a wrong key), or None: said once, up front."""
    retry = RetryPolicy(max_wait=min(PREFLIGHT_WAIT, args.retry_wait))
    async with AsyncOcrClient(args.server, args.api_key, retry=retry) as client:
        try:
            await client.stats()
        except OcrError as exc:
            return f"cannot use the service at {args.server}: {exc}"
    return None


async def run(args: argparse.Namespace, jobs: list[Job], skipped: int) -> int:
    problem = await check_service(args)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    async with AsyncOcrClient(args.server, args.api_key, retry=RetryPolicy(max_wait=args.retry_wait),
                              poll_window=PROGRESS_POLL) as client:
        state = Run(args, client, jobs)
        workers = [asyncio.create_task(state.worker()) for _ in range(min(args.concurrency, len(jobs)))]
        interrupted = False
        try:
            await asyncio.gather(*workers)
        except asyncio.CancelledError:  # Ctrl+C: asyncio.run cancels this task
            interrupted = True
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()  # this task goes on cleaning up: let its own waits work again
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            await state.cancel_waiting()
        finally:
            state.progress.close()
        refusals = client.counters.refusals
    print(f"{state.written} written, {skipped} skipped (output exists), {len(state.failures)} failed; "
          f"{refusals} busy answers (503/429) waited out", file=sys.stderr)
    if interrupted:
        print(f"interrupted: {len(jobs) - state.written - len(state.failures)} inputs not done", file=sys.stderr)
        return 130
    if state.failures:
        print("failed:", file=sys.stderr)
        for label, why in state.failures.items():
            print(f"  {label}: {why}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    extension = "." + args.format
    try:
        jobs = plan(args.inputs, args.out, extension)
    except PlanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not jobs:
        print("error: no supported files found in " + ", ".join(args.inputs), file=sys.stderr)
        return 2
    todo = jobs if args.force else [job for job in jobs if not job.output.exists()]
    try:
        return asyncio.run(run(args, todo, skipped=len(jobs) - len(todo)))
    except KeyboardInterrupt:  # a second Ctrl+C while cleaning up
        return 130
