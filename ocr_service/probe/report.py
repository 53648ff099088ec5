"""The probe's report: the table, the recommendation block users of the original tool know, and the `.env` lines."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ocr_service.probe.curve import ProbeResult, Recommendation, Trial

MiB = 1024**2


def _mib(value: int | None) -> str:
    return "-" if not value else f"{value / MiB:,.0f}"


def format_trial(trial: Trial) -> str:
    if trial.ok:
        return (
            f"batch {trial.batch_size:>4}: ok   {trial.seconds or 0:8.3f} s  {trial.pages_per_s or 0:8.2f} pages/s  "
            f"peak {_mib(trial.peak_memory_bytes)} MiB"
        )
    kind = "OOM " if trial.out_of_memory else "FAIL"
    return f"batch {trial.batch_size:>4}: {kind} {trial.error}"


def format_table(trials: Sequence[Trial]) -> str:
    """One row per batch size tried, smallest first."""
    header = f"{'batch':>6} {'result':>7} {'latency s':>10} {'pages/s':>9} {'peak MiB':>10} {'device MiB':>11}  note"
    rows = [header, "-" * len(header)]
    for trial in sorted(trials, key=lambda t: t.batch_size):
        result = "ok" if trial.ok else ("OOM" if trial.out_of_memory else "error")
        latency = "-" if trial.seconds is None or not trial.ok else f"{trial.seconds:.3f}"
        rate = "-" if trial.pages_per_s is None else f"{trial.pages_per_s:.2f}"
        note = "" if trial.ok else (trial.error or "")[:100]
        rows.append(
            f"{trial.batch_size:>6} {result:>7} {latency:>10} {rate:>9} "
            f"{_mib(trial.peak_memory_bytes):>10} {_mib(trial.device_used_bytes):>11}  {note}".rstrip()
        )
    return "\n".join(rows)


def env_lines(recommendation: Recommendation) -> dict[str, str]:
    return {
        "OCR_BATCH_SIZE": str(recommendation.batch_size),
        "OCR_MAX_QUEUE_SIZE": str(recommendation.max_queue_size),
    }


def format_report(result: ProbeResult) -> str:
    """The table and the recommendation block."""
    bar = "=" * 60
    lines = [f"Engine: {result.engine} ({result.device})", "", format_table(result.trials), ""]
    lines += [bar, "RECOMMENDATIONS", bar]
    rec = result.recommendation
    if rec is None:
        lines += [*result.notes, "No batch size fits."]
        return "\n".join(lines)
    lines += [
        f"For {result.device}:",
        f"  Maximum safe batch size: {result.maximum}"
        + (" (the --max-batch cap; larger batches were not tried)" if result.capped else ""),
        *(f"    {note}" for note in result.notes),
        f"  Recommended batch size: {rec.batch_size}",
        f"    ({rec.reason})",
        "",
        "Update your .env file:",
        *(f"  {key}={value}" for key, value in env_lines(rec).items()),
        f"    (OCR_MAX_QUEUE_SIZE: {rec.queue_reason})",
    ]
    return "\n".join(lines)


def update_env_file(path: Path, values: dict[str, str]) -> None:
    """Set `values` in a .env file: replace their lines, append the missing, keep every other line."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    pending = dict(values)
    for number, line in enumerate(lines):
        key = line.strip().removeprefix("export ").split("=", 1)[0].strip()
        if "=" in line and not line.lstrip().startswith("#") and key in values:
            lines[number] = f"{key}={values[key]}"
            pending.pop(key, None)
    lines += [f"{key}={value}" for key, value in pending.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
