"""The ledger alone: admission, page outcomes, every way a task ends, counts and expiry.
No HTTP, no batcher, no sleeps: the tests play the batcher's part through the sink calls."""

from __future__ import annotations

import io

import pytest

from ocr_service.core.ledger import CancelRefused, QueueFull, WorkLedger
from ocr_service.core.queue import PageQueue
from ocr_service.core.store import MemoryTaskStore
from ocr_service.core.tasks import BatchJob, OcrParams, Task, TaskStatus
from ocr_service.documents import DecoderPool, DocumentLimits, open_document
from ocr_service.engines.base import EngineError, PageOutput
from tests.helpers import encode, solid_image

PARAMS = OcrParams("<image>\nFree OCR.", 0.0, 100)
LIMITS = DocumentLimits(max_pixels=10_000_000, max_pdf_pages=50)


def ledger(limit: int = 10, ttl: float = 60) -> WorkLedger:
    return WorkLedger(MemoryTaskStore(ttl=ttl), PageQueue(), limit=limit)


def pdf(pages: int) -> bytes:
    images = [solid_image(seed) for seed in range(pages)]
    buffer = io.BytesIO()
    images[0].save(buffer, "PDF", save_all=True, append_images=images[1:])
    return buffer.getvalue()


async def admitted(book: WorkLedger, pool: DecoderPool, data: bytes | None = None) -> Task:
    task = Task(PARAMS)
    data = data or encode(solid_image(1))
    await book.admit_document(task, open_document(data, LIMITS, pool), data)
    return task


def output(text: str = "hello", reason: str = "stop") -> PageOutput:
    return PageOutput(text, reason, width=64, height=48)


async def test_admission_counts_waiting_pages_and_refuses_at_the_limit(pool: DecoderPool) -> None:
    book = ledger(limit=3)
    await admitted(book, pool, pdf(2))
    assert book.waiting == 2
    await admitted(book, pool)
    assert book.waiting == 3
    with pytest.raises(QueueFull) as refused:
        await admitted(book, pool)
    assert refused.value.retry_after >= 1 and refused.value.reason == "queue_full"
    assert book.total == 2 and book.counts[TaskStatus.PENDING] == 2


async def test_a_document_is_admitted_whole_even_past_the_limit(pool: DecoderPool) -> None:
    book = ledger(limit=2)
    await admitted(book, pool, pdf(5))
    assert len(book.queue) == 5


async def test_a_url_holds_one_place_until_its_document_arrives(pool: DecoderPool) -> None:
    book = ledger(limit=5)
    task = Task(PARAMS, url="http://x.test/a.pdf")
    await book.admit_pending([task])
    assert book.waiting == 1 and len(book.queue) == 0
    await book.document_arrived(task, open_document(pdf(3), LIMITS, pool), pdf(3))
    assert book.waiting == 3 and len(book.queue) == 3


async def test_pages_complete_a_task_in_page_order_whatever_order_they_finish(pool: DecoderPool) -> None:
    book = ledger()
    task = await admitted(book, pool, pdf(3))
    jobs = book.queue.take(3)
    book.pages_started(jobs)
    assert task.status is TaskStatus.PROCESSING and book.pages_in_flight == 3
    for job in reversed(jobs):
        book.page_finished(job, output(f"page {job.index + 1}"))
    assert task.status is TaskStatus.COMPLETED and book.pages_in_flight == 0
    assert task.result == "page 1\n<--- Page Split --->\npage 2\n<--- Page Split --->\npage 3"
    assert task.document is None  # dropped at the end
    assert book.counts[TaskStatus.COMPLETED] == 1 and book.ended[TaskStatus.COMPLETED] == 1


async def test_a_failed_page_fails_its_task_and_its_other_pages_leave_the_queue(pool: DecoderPool) -> None:
    book = ledger()
    task = await admitted(book, pool, pdf(3))
    other = await admitted(book, pool)
    first = book.queue.take(1)
    book.pages_started(first)
    book.page_finished(first[0], EngineError("the engine choked"))
    assert task.status is TaskStatus.FAILED and task.error == "page 1: the engine choked"
    assert [job.task for job in book.queue.take(10)] == [other]  # pages 2 and 3 are gone


async def test_a_truncated_page_completes_with_a_warning(pool: DecoderPool) -> None:
    book = ledger()
    task = await admitted(book, pool)
    (job,) = book.queue.take(1)
    book.pages_started([job])
    book.page_finished(job, output("loop loop", "length"))
    assert task.status is TaskStatus.COMPLETED and task.pages[0] is not None and task.pages[0].truncated
    assert "max_tokens" in task.warnings[0]


async def test_ending_a_pending_url_stops_its_download_and_frees_its_place(pool: DecoderPool) -> None:
    book = ledger(limit=1)
    task = Task(PARAMS, url="http://x.test/a.png")
    await book.admit_pending([task])
    stopped: list[str] = []
    book.on_end(task, lambda: stopped.append(task.id))
    book.cancel(task)
    assert stopped == [task.id] and task.status is TaskStatus.CANCELLED and book.waiting == 0
    late = encode(solid_image(1))
    await book.document_arrived(task, open_document(late, LIMITS, pool), late)  # too late: ignored
    assert len(book.queue) == 0
    await admitted(book, pool)  # the place is free again


async def test_cancel_stops_a_running_task_keeping_its_done_pages_and_refuses_an_ended_one(pool: DecoderPool) -> None:
    book = ledger()
    running = await admitted(book, pool, pdf(3))
    first, second = book.queue.take(2)
    book.pages_started([first, second])
    book.page_finished(first, output("page one"))
    book.cancel(running)
    assert running.status is TaskStatus.CANCELLED and len(book.queue) == 0  # page 3 never runs
    assert running.pages_done == 1 and "not done: pages 2, 3" in running.warnings[-1]
    book.page_finished(second, output("late"))  # finished in the engine after the cancel: dropped
    assert running.pages_done == 1
    book.cancel(running)  # again: harmless
    assert book.ended[TaskStatus.CANCELLED] == 1
    done = await admitted(book, pool)
    (job,) = book.queue.take(1)
    book.pages_started([job])
    book.page_finished(job, output())
    with pytest.raises(CancelRefused, match="completed"):
        book.cancel(done)


async def test_estimates_count_the_pages_that_must_finish_first(pool: DecoderPool) -> None:
    now = [0.0]
    book = WorkLedger(MemoryTaskStore(ttl=60), PageQueue(), limit=50, clock=lambda: now[0])
    first = await admitted(book, pool, pdf(4))
    assert book.estimated_wait(first) is None  # nothing measured yet
    jobs = book.queue.take(2)
    book.pages_started(jobs)
    now[0] = 2.0
    for job in jobs:
        book.page_finished(job, output())  # 2 pages in 2 s of work: 1 page/s
    later = await admitted(book, pool, pdf(3))
    book.pages_started(book.queue.take(2))  # pages 3 and 4 of the first task in the engine
    assert book.estimated_wait(first) == 2.0  # its last two pages are in the engine
    assert book.estimated_wait(later) == 5.0  # those two, then its own three
    book.cancel(later)
    assert book.estimated_wait(later) is None


async def test_a_page_that_finishes_after_its_task_ended_changes_nothing(pool: DecoderPool) -> None:
    book = ledger()
    task = await admitted(book, pool, pdf(2))
    jobs = book.queue.take(2)
    book.pages_started(jobs)
    book.fail(task, "shutting down")
    book.page_finished(jobs[0], output())
    assert task.status is TaskStatus.FAILED and task.pages_done == 0 and book.pages_in_flight == 1


async def test_stop_admitting_refuses_with_the_reason_and_fail_unfinished_ends_everything(pool: DecoderPool) -> None:
    book = ledger()
    running = await admitted(book, pool)
    book.pages_started(book.queue.take(1))
    waiting = await admitted(book, pool)
    book.stop_admitting(retry_after=7, reason="shutting_down", detail="going away")
    with pytest.raises(QueueFull) as refused:
        book.check_room()
    assert refused.value.retry_after == 7 and refused.value.reason == "shutting_down"
    assert str(refused.value) == "going away"
    assert book.fail_unfinished("gone", waiting_only=True) == 1
    assert waiting.status is TaskStatus.FAILED and running.status is TaskStatus.PROCESSING
    assert book.fail_unfinished("gone") == 1
    assert book.counts[TaskStatus.FAILED] == 2 and book.counts[TaskStatus.PROCESSING] == 0


async def test_batch_items_expire_with_their_batch_and_counts_follow(pool: DecoderPool) -> None:
    book = ledger(ttl=10)
    tasks = [Task(PARAMS, url=f"http://x.test/{n}.png") for n in range(2)]
    batch = BatchJob(tasks)
    for task in tasks:
        task.batch_id = batch.id
    await book.admit_pending(tasks, batch)
    single = await admitted(book, pool)
    book.fail(tasks[0], "404")
    book.cancel(single)
    assert await book.expire(now=single.finished_at + 60) == 1  # the lone task; the batch still runs
    book.cancel(tasks[1])
    assert await book.get_batch(batch.id) is batch
    assert await book.expire(now=tasks[1].finished_at + 60) == 2
    assert await book.get_batch(batch.id) is None and await book.get_task(tasks[0].id) is None
    assert book.total == 0 and book.expired == 3
    assert book.ended[TaskStatus.FAILED] == 1 and book.ended[TaskStatus.CANCELLED] == 2


async def test_other_owners_see_nothing(pool: DecoderPool) -> None:
    book = ledger()
    task = Task(PARAMS, owner="alpha")
    data = encode(solid_image(1))
    await book.admit_document(task, open_document(data, LIMITS, pool), data)
    assert await book.get_task(task.id, "alpha") is task
    assert await book.get_task(task.id, "beta") is None
    assert await book.get_task(task.id) is None
