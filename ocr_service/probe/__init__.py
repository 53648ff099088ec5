"""The batch-size probe: find the largest batch that fits, measure the curve, recommend one.

`test_batch_size.py` is its command line. The probe builds the engine from the same
Settings as the service, so it measures what the service will run. It tries batches
of 1, 2, 4, ... pages until one fails (or `max_batch`), then bisects between the last
size that fit and the first that did not, so the maximum is exact rather than a power
of two. Every trial records its latency, pages per second and peak memory; an
out-of-memory error (or any other) is recorded as a failed trial, memory is freed and
the probe goes on.

The recommendation is not "half the maximum" (the original tool's rule): it is the knee of the
measured throughput curve, the smallest batch that reaches `KNEE_SHARE` of the best
pages/s, because past the knee a bigger batch buys latency, not throughput; and it
stays within `HEADROOM` of the maximum, because the test page is one page at one size
while real pages vary (Gundam mode cuts 2 to 6 tiles, outputs differ in length).

This is a command-line tool, not part of the service: it drives the engine from its
own event loop, one batch at a time, and reads no environment itself.
"""

from ocr_service.engines.sample_page import render_tall_page, render_test_page
from ocr_service.probe.curve import (
    Recommendation,
    Trial,
    headroom_limit,
    queue_size_for,
    recommend,
    search,
)
from ocr_service.probe.report import (
    env_lines,
    format_report,
    format_table,
    update_env_file,
)
from ocr_service.probe.runner import (
    DEFAULT_MAX_BATCH,
    ProbeError,
    ProbeResult,
    default_max_batch,
    run_probe,
)

__all__ = [
    "DEFAULT_MAX_BATCH",
    "ProbeError",
    "ProbeResult",
    "Recommendation",
    "Trial",
    "default_max_batch",
    "env_lines",
    "format_report",
    "format_table",
    "headroom_limit",
    "queue_size_for",
    "recommend",
    "render_tall_page",
    "render_test_page",
    "run_probe",
    "search",
    "update_env_file",
]
