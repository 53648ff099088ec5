"""Which inputs the command line reads, and where each one's output goes."""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

# What a folder is searched for. A file named on the command line is sent whatever its
# name: the service detects the format from the bytes.
SUPPORTED = frozenset({".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".pdf"})


class PlanError(Exception):
    """The command line names something that cannot be read, or two inputs would share an output."""


@dataclass(frozen=True)
class Job:
    """One input (a file, or a URL the service fetches) and the output file it gets."""

    source: Path | str
    output: Path

    @property
    def is_url(self) -> bool:
        return isinstance(self.source, str)

    @property
    def label(self) -> str:
        return str(self.source)


def is_url(item: str) -> bool:
    return item.startswith(("http://", "https://"))


def plan(inputs: list[str], out_dir: Path, extension: str) -> list[Job]:
    """One job per file or URL, in a stable order.

    An output keeps the input's whole name plus `extension` (scan.pdf -> scan.pdf.md), so
    scan.png and scan.pdf beside each other never collide; a folder's files keep their
    path below that folder. A URL's output is named after its last path segment and a
    hash of the URL, so the same URL always maps to the same output (that is what makes
    a second run skip it).
    """
    jobs: list[Job] = []
    for item in inputs:
        if is_url(item):
            jobs.append(Job(item, out_dir / (url_name(item) + extension)))
            continue
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED)
            jobs.extend(Job(file, out_dir / (str(file.relative_to(path)) + extension)) for file in files)
        elif path.is_file():
            jobs.append(Job(path, out_dir / (path.name + extension)))
        else:
            raise PlanError(f"{item}: no such file, folder or http(s) URL")
    jobs = list(dict.fromkeys(jobs))  # an input named twice is read once
    check_unique(jobs)
    return jobs


def url_name(url: str) -> str:
    segment = unquote(urlsplit(url).path.rstrip("/").rpartition("/")[2]) or "document"
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", segment).lstrip(".")[:80] or "document"
    return f"{safe}-{hashlib.sha256(url.encode()).hexdigest()[:10]}"


def check_unique(jobs: list[Job]) -> None:
    by_output: dict[Path, list[str]] = defaultdict(list)
    for job in jobs:
        by_output[job.output].append(job.label)
    clashes = {output: labels for output, labels in by_output.items() if len(labels) > 1}
    if clashes:
        lines = [f"  {output}: {', '.join(labels)}" for output, labels in clashes.items()]
        raise PlanError("inputs that would write the same output (run them separately, with another --out):\n"
                        + "\n".join(lines))
