"""The probe's arithmetic: the batch-size search, and the recommendation from its curve."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

KNEE_SHARE = 0.90  # a batch "reaches the plateau" at 90% of the best measured pages/s
HEADROOM = 0.80  # recommend at most 80% of the maximum that fitted the test page
QUEUE_SECONDS = 60  # OCR_MAX_QUEUE_SIZE holds about this much work at the measured rate
QUEUE_MIN_BATCHES = 4  # ... and never fewer batches than this, so full batches are always ready


class ProbeError(Exception):
    """The probe cannot run as asked (bad flag for this machine); the message says why."""


@dataclass(frozen=True)
class Trial:
    """One batch size, run once."""

    batch_size: int
    seconds: float | None = None
    peak_memory_bytes: int | None = None  # the engine's own peak (torch allocator, fake model)
    device_used_bytes: int | None = None  # highest NVML reading during the batch (whole GPU)
    error: str | None = None
    out_of_memory: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def pages_per_s(self) -> float | None:
        if not self.ok or not self.seconds:
            return None
        return self.batch_size / self.seconds


def search(try_size: Callable[[int], Trial], max_batch: int) -> list[Trial]:
    """Trials in the order run: doubling from 1 until a failure or `max_batch`, then bisection.

    Memory grows with batch size, so "fits" is monotone and bisection between the last
    size that fit and the first that failed finds the exact maximum in log2 steps.
    """
    if max_batch < 1:
        raise ProbeError("--max-batch must be at least 1")
    trials: list[Trial] = []
    fit, failed = 0, None
    size = 1
    while True:
        trial = try_size(size)
        trials.append(trial)
        if not trial.ok:
            failed = size
            break
        fit = size
        if size >= max_batch:
            break
        size = min(size * 2, max_batch)
    while failed is not None and failed - fit > 1:
        middle = (fit + failed) // 2
        trial = try_size(middle)
        trials.append(trial)
        if trial.ok:
            fit = middle
        else:
            failed = middle
    return trials


def maximum_fit(trials: Sequence[Trial]) -> int:
    """The largest batch that ran; 0 when none did."""
    return max((t.batch_size for t in trials if t.ok), default=0)


@dataclass(frozen=True)
class Recommendation:
    batch_size: int
    reason: str
    pages_per_s: float | None
    max_queue_size: int
    queue_reason: str


def headroom_limit(maximum: int, headroom: float = HEADROOM) -> int:
    """The largest batch we would recommend: `headroom` of the maximum, at least 1."""
    return max(1, math.floor(maximum * headroom))


def recommend(trials: Sequence[Trial], maximum: int, headroom: float = HEADROOM) -> Recommendation:
    """Choose OCR_BATCH_SIZE from the measured curve (pure: no engine, no clock).

    The knee is the smallest measured batch whose pages/s reaches KNEE_SHARE of the best
    measured anywhere. If the knee lies above the headroom limit, the throughput is
    still rising there, so the largest measured batch within the limit is taken.
    `headroom` is 1 where the maximum already holds the worst page (the vLLM mode).
    """
    if maximum < 1:
        raise ValueError("nothing fitted; there is nothing to recommend")
    limit = headroom_limit(maximum, headroom)
    measured = sorted((t for t in trials if t.ok and t.pages_per_s), key=lambda t: t.batch_size)
    if not measured:
        return _with_queue(limit, None, f"no timings were measured; {limit} is {headroom:.0%} of the maximum")
    best = max(measured, key=lambda t: t.pages_per_s or 0.0)
    best_rate = best.pages_per_s or 0.0
    target = KNEE_SHARE * best_rate
    within = [t for t in measured if t.batch_size <= limit]
    knee = next((t for t in measured if (t.pages_per_s or 0.0) >= target), best)
    if knee.batch_size <= limit:
        chosen = knee
        rate = chosen.pages_per_s or 0.0
        reason = (
            f"{chosen.batch_size} reaches {rate / best_rate:.0%} of the best measured throughput "
            f"({rate:.2f} of {best_rate:.2f} pages/s at {best.batch_size}); "
        )
        if best.batch_size > chosen.batch_size and best.seconds and chosen.seconds:
            reason += (
                f"larger batches add latency ({chosen.seconds:.2f} s -> {best.seconds:.2f} s a batch) "
                f"for little more throughput, "
            )
        reason += f"and it stays within the memory headroom limit of {limit} ({headroom:.0%} of the maximum {maximum})"
    elif within:
        chosen = within[-1]
        rate = chosen.pages_per_s or 0.0
        reason = (
            f"{chosen.batch_size} is the memory headroom limit ({headroom:.0%} of the maximum {maximum}, "
            f"room for pages larger than the test page); throughput still rises up to it "
            f"({rate:.2f} pages/s here, {best_rate:.2f} at {best.batch_size})"
        )
    else:  # the limit was not measured (callers measure it; see run_probe)
        return _with_queue(limit, None, f"{limit} is {headroom:.0%} of the maximum {maximum}")
    return _with_queue(chosen.batch_size, chosen.pages_per_s, reason)


def _with_queue(batch_size: int, pages_per_s: float | None, reason: str) -> Recommendation:
    queue, queue_reason = queue_size_for(batch_size, pages_per_s)
    return Recommendation(batch_size, reason, pages_per_s, queue, queue_reason)


def queue_size_for(batch_size: int, pages_per_s: float | None) -> tuple[int, str]:
    """OCR_MAX_QUEUE_SIZE: about QUEUE_SECONDS of work, and at least QUEUE_MIN_BATCHES batches.

    The queue bounds how long an admitted page waits: a client at the back of a full
    queue waits queue/throughput seconds, so a minute of work keeps that wait short
    (and the 503's Retry-After honest) while smoothing bursts. A few full batches
    must always be ready so the engine never idles between them.
    """
    floor = QUEUE_MIN_BATCHES * batch_size
    if not pages_per_s:
        return max(100, floor), f"no throughput measured; kept the default 100 (at least {QUEUE_MIN_BATCHES} batches)"
    by_time = math.ceil(QUEUE_SECONDS * pages_per_s / 10) * 10  # a round number
    if by_time >= floor:
        return by_time, (
            f"about {QUEUE_SECONDS} s of work at {pages_per_s:.2f} pages/s: a full queue drains "
            f"within a minute, so no admitted page waits longer than that"
        )
    return floor, f"{QUEUE_MIN_BATCHES} batches of {batch_size}, so full batches are always ready"


@dataclass
class ProbeResult:
    engine: str
    device: str
    trials: list[Trial] = field(default_factory=list)  # in the order run
    maximum: int = 0
    capped: bool = False  # the maximum is --max-batch, not a failure
    recommendation: Recommendation | None = None
    failure: str | None = None  # why nothing fitted
    notes: list[str] = field(default_factory=list)  # what the maximum rests on (the vLLM mode's numbers)
