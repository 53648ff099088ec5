"""OCR quality: character error rate, reading order and speed of the default engine and Tesseract.

Corpus. PDF manuals from Debian documentation packages (pinned versions fetched with
`apt-get download` and unpacked with `dpkg-deb -x` into bench/.cache), pages picked as
single-column text, tables of contents, tables and two-column indexes; plus generated
pages whose text is known (two columns offset by half a line or on one baseline grid,
three columns, a sidebar, a title over columns, an index, a table of contents, a table,
a scan turned by 1 degree), drawn with Pillow in DejaVu fonts at 144 dpi.

Ground truth. A manual's text layer as pdfium returns it (`get_text_range`): the order
in which the PDF draws its text, which for these TeX, DocBook and FOP builds is the
reading order (column by column; a table-of-contents entry's number after its title).
poppler's `pdftotext -layout` keeps the page's physical layout, and plain `pdftotext`
reorders by its own block analysis, which puts a TOC's section numbers in a block of
their own apart from the titles.

Engines, side by side on the same page images, each on one core, one page at a time:
- rapidocr: the service's own `RapidOcrEngine` and `build_page`, i.e. a page's
  `markdown` as a user gets it; its Markdown is rendered with a CommonMark parser and
  the text taken back, so escapes and heading or list markers are not counted.
- tesseract: Debian's `tesseract` CLI (`tesseract-ocr`, `tesseract-ocr-eng`), default
  page segmentation, OMP_THREAD_LIMIT=1; its time includes starting the process
  (reported apart, measured on a blank image).

Scores (both texts normalised alike: NFKC, typographic quotes and dashes as ASCII,
bullets and dot leaders dropped, a word hyphenated at a line end joined, whitespace runs
as one space):
- cer: Levenshtein distance over reference characters (rapidfuzz): what a user sees;
- wer: the same over words;
- bag_wer: words missing or extra whatever their order (the larger of the two multiset
  differences over reference words). A word error changes that difference by at most
  one, so bag_wer <= wer, and wer - bag_wer is what reading order alone costs;
- order: the share of words (those that occur once in both texts) outside the longest
  run that both texts have in the same order: reading-order error at word level.
(CER on the words sorted alphabetically was tried first and dropped: a word split or
joined differently moves in the sort and costs twice its length, so that figure came out
above the plain CER on single-column pages; so did moving each line of the engine's text
to where it matched the reference best, when lines repeat.)
A group's figures are totals (edits over characters of all its pages), not means.

Run: `python bench/quality.py` (about 3 minutes of CPU time; 15 minutes on a busy 2-core
machine), or `--pages 12` for a quick run. Needs apt-get and dpkg-deb (Debian), `tesseract` and requirements_bench.txt.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import gzip
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from markdown_it import MarkdownIt
from PIL import Image, ImageDraw, ImageFont
from rapidfuzz.distance import Levenshtein

from bench.pages import WORDS
from ocr_service.config import Settings
from ocr_service.documents.document import DocumentLimits
from ocr_service.documents.pdf import PdfDocument
from ocr_service.engines.base import PageOutput, PageRequest
from ocr_service.engines.rapidocr import RapidOcrEngine
from ocr_service.output.pages import build_page

CACHE = REPO / "bench" / ".cache"
RESULTS = REPO / "bench" / "results" / "quality.json"
FONTS = Path("/usr/share/fonts/truetype/dejavu")
# Groups whose figures the targets compare with the same document's single-column pages.
COLUMNS = ("two-column", "index")


@dataclass(frozen=True)
class Manual:
    """A PDF in a Debian package, and the pages to read by category (1-based)."""

    name: str
    package: str
    version: str
    path: str  # inside the package; a ".gz" beside it is unpacked
    pages: dict[str, list[int]]


MANUALS = [
    Manual("libtasn1", "libtasn1-doc", "4.19.0-2+deb12u1", "usr/share/doc/libtasn1-doc/libtasn1.pdf",
           {"single": [5, 9, 13, 18, 24], "toc": [3], "index": [35, 36]}),
    Manual("gnuplot", "gnuplot-doc", "5.4.4+dfsg1-2", "usr/share/doc/gnuplot/gnuplot.pdf",
           {"single": [25, 60, 110, 160, 230], "toc": [3, 5], "index": [304, 305, 307, 309]}),
    Manual("debian-policy", "debian-policy", "4.6.2.0", "usr/share/doc/debian-policy/policy.pdf",
           {"single": [15, 40, 80, 120, 170], "toc": [3, 4], "index": [193]}),
    Manual("developers-reference", "developers-reference", "12.18",
           "usr/share/developers-reference/developers-reference.pdf",
           {"single": [20, 45, 70, 100], "toc": [3, 4]}),
    Manual("debian-reference", "debian-reference-en", "2.100", "usr/share/debian-reference/debian-reference.en.pdf",
           {"single": [30, 90, 150, 200], "table": [237, 259]}),
    Manual("debmake-doc", "debmake-doc", "1.17-7", "usr/share/doc/debmake-doc/debmake-doc.en.pdf",
           {"single": [20, 50, 90], "toc": [4, 5]}),
    Manual("gri", "gri-pdf-doc", "2.12.27-1.1", "usr/share/doc/gri/gri.pdf",
           {"single": [20, 60, 150], "toc": [5, 6], "index": [270, 271, 275, 279]}),
    Manual("fhs", "debian-policy", "4.6.2.0", "usr/share/doc/debian-policy/fhs/fhs-3.0.pdf",
           {"single": [10, 25], "toc": [2, 3]}),
]  # fmt: skip


@dataclass
class Page:
    """One page to read: where it comes from, its image and its reference text."""

    document: str
    number: int
    category: str
    image: Image.Image
    reference: str
    label: str = ""  # what a generated page shows


# -- the corpus ---------------------------------------------------------------------------


def fetch(manual: Manual, cache: Path) -> tuple[Path, str]:
    """The manual's PDF, downloaded and unpacked on first use; and the package version used."""
    debs, root = cache / "debs", cache / "root"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{manual.package}_*.deb"))
    if not found:
        pinned = subprocess.run(["apt-get", "download", f"{manual.package}={manual.version}"], cwd=debs, check=False)
        if pinned.returncode != 0:
            print(f"warning: {manual.package}={manual.version} is gone; taking the current version, "
                  "whose page numbers may not match the categories", file=sys.stderr)  # fmt: skip
            subprocess.run(["apt-get", "download", manual.package], cwd=debs, check=True)
        found = sorted(debs.glob(f"{manual.package}_*.deb"))
    deb = found[-1]
    version = deb.name.split("_")[1].replace("%3a", ":")
    pdf = root / manual.path
    if not pdf.exists():
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        packed = pdf.with_name(pdf.name + ".gz")
        if not pdf.exists() and packed.exists():
            pdf.write_bytes(gzip.decompress(packed.read_bytes()))
    return pdf, version


def manual_pages(manual: Manual, cache: Path, limits: DocumentLimits) -> tuple[list[Page], str]:
    """The manual's chosen pages, rasterised as the service does, with their text layers."""
    import pypdfium2 as pdfium

    path, version = fetch(manual, cache)
    data = path.read_bytes()
    document = PdfDocument.open(data, limits)
    text_layer = pdfium.PdfDocument(data)
    pages = []
    for category, numbers in manual.pages.items():
        for number in numbers:
            reference = text_layer[number - 1].get_textpage().get_text_range()
            image = document.load_page(number - 1)
            pages.append(Page(manual.name, number, category, image, reference))
    text_layer.close()
    return pages, version


# -- generated pages with known text ------------------------------------------------------

A4 = (1191, 1684)  # A4 at 144 dpi


def font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    path = FONTS / ("DejaVuSerif-Bold.ttf" if bold else "DejaVuSerif.ttf")
    return ImageFont.truetype(str(path), size) if path.exists() else ImageFont.load_default(size=size)


@dataclass
class Sheet:
    """A page being drawn, and its text in reading order."""

    image: Image.Image = field(default_factory=lambda: Image.new("RGB", A4, "white"))
    text: list[str] = field(default_factory=list)

    def line(self, x: float, y: float, text: str, face: Any) -> None:
        ImageDraw.Draw(self.image).text((x, y), text, fill="black", font=face)
        self.text.append(text)

    def column(self, x: float, y: float, width: float, words: list[str], face: Any, pitch: float, bottom: float) -> None:
        """Running text wrapped to `width`, a paragraph break now and then, down to `bottom`."""
        rng = random.Random(len(words))
        line: list[str] = []
        for word in words:
            if face.getlength(" ".join([*line, word])) > width and line:
                if y > bottom:
                    return
                self.line(x, y, " ".join(line), face)
                y += pitch * (1.6 if rng.random() < 0.12 else 1)
                line = []
            line.append(word)
        if line and y <= bottom:
            self.line(x, y, " ".join(line), face)


def words(seed: int, count: int = 900) -> list[str]:
    rng = random.Random(seed)
    return [word.capitalize() if rng.random() < 0.08 else word for word in rng.choices(WORDS, k=count)]


def generated_pages() -> list[Page]:
    body, small, title = font(22), font(18), font(40, bold=True)
    pages = []

    def add(name: str, category: str, sheet: Sheet) -> None:
        pages.append(Page("generated", len(pages) + 1, category, sheet.image, "\n".join(sheet.text), name))

    sheet = Sheet()
    sheet.line(100, 90, "Single Column Report", title)
    sheet.column(100, 180, 990, words(1), body, 34, 1560)
    add("single", "single", sheet)

    for name, offset, seed in (("two columns, offset", 17, 2), ("two columns, one grid", 0, 3)):
        sheet = Sheet()
        sheet.line(100, 90, "Two Column " + ("Offset" if offset else "Grid"), title)
        sheet.column(100, 180, 470, words(seed), body, 34, 1560)
        sheet.column(620, 180 + offset, 470, words(seed + 100), body, 34, 1560)
        add(name, "two-column", sheet)

    sheet = Sheet()
    sheet.line(100, 90, "Three Columns", title)
    for n, x in enumerate((100, 440, 780)):
        sheet.column(x, 180 + 9 * n, 310, words(4 + n), small, 28, 1560)
    add("three columns", "two-column", sheet)

    sheet = Sheet()
    sheet.line(100, 90, "Main Text With a Sidebar", title)
    sheet.column(100, 180, 700, words(7), body, 34, 1560)
    ImageDraw.Draw(sheet.image).rectangle((850, 300, 1100, 900), outline="black", width=2)
    sheet.column(870, 320 + 11, 215, words(8, 120), small, 28, 880)
    add("sidebar", "two-column", sheet)

    sheet = Sheet()
    sheet.line(100, 90, "Index", title)
    rng = random.Random(9)
    entries = sorted({f"{rng.choice(WORDS)} {rng.choice(WORDS)}" for _ in range(140)})
    for n, x in enumerate((100, 620)):
        y = 180.0
        for entry in entries[n * 40 : (n + 1) * 40]:
            numbers = ", ".join(str(v) for v in sorted(rng.sample(range(1, 300), rng.randint(1, 3))))
            sheet.line(x, y, f"{entry}, {numbers}", small)
            y += 30 + 3 * n  # the right column on a slightly wider pitch: rows drift apart
    add("index", "index", sheet)

    sheet = Sheet()
    sheet.line(100, 90, "Contents", title)
    y = 180
    for chapter in range(1, 6):
        for section in range(0, 4):
            label = f"{chapter}" if section == 0 else f"{chapter}.{section}"
            name = " ".join(rng.choices(WORDS, k=rng.randint(2, 4))).capitalize()
            face, x = (font(22, bold=True), 100) if section == 0 else (body, 140)
            number = str(chapter * 20 + section * 4)
            ImageDraw.Draw(sheet.image).text((x, y), f"{label} {name}", fill="black", font=face)
            end = x + face.getlength(f"{label} {name}") + 12
            leader = " ." * int((1030 - end - body.getlength(number)) / body.getlength(" ."))
            ImageDraw.Draw(sheet.image).text((end, y), leader, fill="black", font=body)
            ImageDraw.Draw(sheet.image).text((1090 - body.getlength(number), y), number, fill="black", font=body)
            sheet.text.append(f"{label} {name} {number}")
            y += 36 if section else 44
    add("toc", "toc", sheet)

    sheet = Sheet()
    sheet.line(100, 90, "Package Table", title)
    for n in range(20):
        cells = [rng.choice(WORDS) + "-" + rng.choice(WORDS), f"{rng.randint(1, 9)}.{rng.randint(0, 30)}-1",
                 f"{rng.randint(10, 9000)} kB", " ".join(rng.choices(WORDS, k=3))]  # fmt: skip
        for x, cell in zip((100, 420, 620, 800), cells, strict=True):
            sheet.line(x, 180 + n * 36, cell, body)
        sheet.text[-4:] = [" ".join(sheet.text[-4:])]
    add("table", "table", sheet)

    sheet = Sheet()
    sheet.line(100, 90, "Two Columns Turned", title)
    sheet.column(100, 180, 470, words(10), body, 34, 1560)
    sheet.column(620, 197, 470, words(110), body, 34, 1560)
    sheet.image = sheet.image.rotate(1.0, resample=Image.Resampling.BICUBIC, fillcolor="white")
    add("two columns, turned 1 degree", "two-column", sheet)
    return pages


# -- engines ------------------------------------------------------------------------------


class RapidOcr:
    """The service's default engine and page builder: the `markdown` a user gets, as text."""

    name = "rapidocr"

    def __init__(self) -> None:
        self.engine = RapidOcrEngine(threads=1)
        self.engine.load()
        self.parser = MarkdownIt("commonmark").enable("table")
        self.markdown = ""  # the last page's, as the service returns it

    def read(self, image: Image.Image) -> str:
        self.markdown = asyncio.run(self._markdown(image))
        return markdown_text(self.parser, self.markdown)

    async def _markdown(self, image: Image.Image) -> str:
        async for _, outcome in self.engine.run([PageRequest.of_image(image, "<image>\nFree OCR.")]):
            if not isinstance(outcome, PageOutput):
                raise outcome
            blocks = outcome.blocks
            return build_page(outcome.text, outcome.finish_reason, outcome.width, outcome.height, 1, blocks).markdown
        raise RuntimeError("the engine returned no page")

    def close(self) -> None:
        self.engine.close()


class Tesseract:
    """Debian's tesseract CLI on one core."""

    name = "tesseract"

    def __init__(self) -> None:
        if shutil.which("tesseract") is None:
            raise SystemExit("tesseract is not installed: apt-get install tesseract-ocr tesseract-ocr-eng")
        self.folder = Path(tempfile.mkdtemp(prefix="quality-"))
        self.env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
        self.startup_s = self._time(Image.new("RGB", (64, 32), "white"))

    def _time(self, image: Image.Image) -> float:
        start = time.perf_counter()
        self.read(image)
        return time.perf_counter() - start

    def read(self, image: Image.Image) -> str:
        path = self.folder / "page.png"
        image.save(path)
        done = subprocess.run(
            ["tesseract", str(path), "stdout", "-l", "eng"], capture_output=True, text=True, env=self.env, check=True
        )
        return done.stdout

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def markdown_text(parser: MarkdownIt, markdown: str) -> str:
    """What Markdown says, as plain text: escapes resolved, syntax dropped, a block per line."""
    out: list[str] = []
    for token in parser.parse(markdown):
        if token.type == "inline":
            for child in token.children or []:
                out.append("\n" if child.type in ("softbreak", "hardbreak") else child.content)
        elif token.type == "list_item_open" and token.info:
            out.append(token.info + token.markup + " ")  # an ordered item's number
        elif token.type in ("th_close", "td_close"):
            out.append(" ")
        elif token.type in ("paragraph_close", "heading_close", "tr_close"):
            out.append("\n")
    return "".join(out)


# -- scores -------------------------------------------------------------------------------

_QUOTES = str.maketrans({"‘": "'", "’": "'", "‚": "'", "“": '"', "”": '"', "„": '"', "–": "-", "—": "-", "−": "-"})
_BULLETS = re.compile(r"[•●○◦▪■□‣∙·]")
_LEADERS = re.compile(r"(?:\.\s*){3,}")
_LINE_END_HYPHEN = re.compile(r"(\w)-[ \t]*\r?\n\s*(\w)")


def lines(text: str) -> list[str]:
    """The text's lines, normalised (a word hyphenated at a line end joined first); empty ones dropped."""
    text = unicodedata.normalize("NFKC", text.replace("\ufffe", "-\n")).translate(_QUOTES)
    text = _LINE_END_HYPHEN.sub(r"\1\2", text)
    out = (" ".join(_LEADERS.sub(" ", _BULLETS.sub(" ", line)).split()) for line in text.splitlines())
    return [line for line in out if line]


@dataclass
class Score:
    """Edit counts of one page or a group of pages (totals, so groups add up)."""

    chars: int = 0
    edits: int = 0
    words: int = 0
    word_edits: int = 0
    bag_word_edits: int = 0
    unique_words: int = 0  # words that occur once in both texts
    out_of_order: int = 0

    @classmethod
    def of(cls, reference: str, hypothesis: str) -> Score:
        ref, hyp = " ".join(lines(reference)), " ".join(lines(hypothesis))
        ref_words, hyp_words = ref.split(), hyp.split()
        ref_bag, hyp_bag = Counter(ref_words), Counter(hyp_words)
        bag_edits = max(sum((ref_bag - hyp_bag).values()), sum((hyp_bag - ref_bag).values()))
        matched, in_order = _order(ref_words, hyp_words)
        return cls(len(ref), Levenshtein.distance(ref, hyp), len(ref_words), Levenshtein.distance(ref_words, hyp_words),
                   bag_edits, matched, matched - in_order)  # fmt: skip

    def __add__(self, other: Score) -> Score:
        return Score(*(a + b for a, b in zip(self.row(), other.row(), strict=True)))

    def row(self) -> tuple[int, ...]:
        return (self.chars, self.edits, self.words, self.word_edits, self.bag_word_edits, self.unique_words,
                self.out_of_order)  # fmt: skip

    def figures(self) -> dict[str, float]:
        words = max(self.words, 1)
        return {
            "cer": self.edits / max(self.chars, 1),
            "wer": self.word_edits / words,
            "bag_wer": self.bag_word_edits / words,
            "order": self.out_of_order / max(self.unique_words, 1),
        }


def _order(reference: list[str], hypothesis: list[str]) -> tuple[int, int]:
    """Words found once in each text, and how many of them lie on the longest run in the same order."""
    ref_counts, hyp_counts = Counter(reference), Counter(hypothesis)
    where = {word: n for n, word in enumerate(hypothesis) if hyp_counts[word] == 1 and ref_counts[word] == 1}
    positions = [where[word] for word in reference if word in where]
    tails: list[int] = []  # longest increasing subsequence, patience sorting
    for position in positions:
        index = bisect.bisect_left(tails, position)
        tails[index : index + 1] = [position]
    return len(positions), len(tails)


# -- the run ------------------------------------------------------------------------------


def stratified(pages: list[Page], limit: int | None) -> list[Page]:
    """The first `limit` pages taken round-robin over (document, category), so a quick run sees every kind."""
    if limit is None or limit >= len(pages):
        return pages
    groups: dict[tuple[str, str], list[Page]] = defaultdict(list)
    for page in pages:
        groups[(page.document, page.category)].append(page)
    picked: list[Page] = []
    while len(picked) < limit:
        for group in groups.values():
            if group and len(picked) < limit:
                picked.append(group.pop(0))
    return picked


def cpu_time() -> float:
    """CPU seconds used so far by this process (all its threads) and its finished children (tesseract)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def machine() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo", encoding="utf-8") as info:
        for line in info:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(), "system": platform.platform()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, help="read only this many pages (a quick run)")
    parser.add_argument("--engines", default="rapidocr,tesseract", help="comma-separated: rapidocr, tesseract")
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--dump", type=Path, help="write each page's reference and engine texts to this folder")
    args = parser.parse_args()

    settings = Settings()
    limits = DocumentLimits(settings.max_image_pixels, settings.max_pdf_pages, settings.pdf_dpi)
    versions: dict[str, str] = {}
    pages: list[Page] = []
    for manual in MANUALS:
        manual_set, versions[manual.package] = manual_pages(manual, args.cache, limits)
        pages += manual_set
    pages = stratified(pages + generated_pages(), args.pages)

    engines: list[RapidOcr | Tesseract] = []
    for name in args.engines.split(","):
        engines.append({"rapidocr": RapidOcr, "tesseract": Tesseract}[name.strip()]())
    seconds: dict[str, float] = defaultdict(float)
    cpu_seconds: dict[str, float] = defaultdict(float)
    rows: list[dict[str, Any]] = []
    scores: dict[tuple[str, str, str], Score] = defaultdict(Score)  # (engine, document, category)
    for number, page in enumerate(pages, 1):
        row: dict[str, Any] = {"document": page.document, "page": page.number, "category": page.category}
        if page.label:
            row["label"] = page.label
        for engine in engines:
            start, start_cpu = time.perf_counter(), cpu_time()
            text = engine.read(page.image)
            took, took_cpu = time.perf_counter() - start, cpu_time() - start_cpu
            seconds[engine.name] += took
            cpu_seconds[engine.name] += took_cpu
            score = Score.of(page.reference, text)
            scores[(engine.name, page.document, page.category)] += score
            row[engine.name] = {**score.figures(), "seconds": round(took, 3), "cpu_seconds": round(took_cpu, 3)}
            if args.dump:
                args.dump.mkdir(parents=True, exist_ok=True)
                (args.dump / f"{page.document}-{page.number}.{engine.name}.txt").write_text(text)
                (args.dump / f"{page.document}-{page.number}.reference.txt").write_text(page.reference)
                if isinstance(engine, RapidOcr):
                    (args.dump / f"{page.document}-{page.number}.rapidocr.md").write_text(engine.markdown)
        row["chars"] = score.chars
        rows.append(row)
        figures = "  ".join(f"{e.name} {row[e.name]['cer']:.3f}" for e in engines)
        print(f"[{number}/{len(pages)}] {page.document} p{page.number} ({page.category}): cer {figures}", flush=True)
    for engine in engines:
        engine.close()

    report = summarise(rows, scores, [e.name for e in engines], seconds, cpu_seconds, len(pages))
    report.update(
        command=" ".join(["python", "bench/quality.py", *sys.argv[1:]]),
        machine=machine(),
        packages=versions,
        tesseract_startup_s=next((round(e.startup_s, 3) for e in engines if isinstance(e, Tesseract)), None),
        pages=rows,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print()
    print(table(report, [e.name for e in engines]))
    print(f"\nwrote {args.out}")


def summarise(
    rows: list[dict[str, Any]],
    scores: dict[tuple[str, str, str], Score],
    names: list[str],
    seconds: dict[str, float],
    cpu_seconds: dict[str, float],
    count: int,
) -> dict[str, Any]:
    """Figures per (document, category), per document, per category and overall; targets."""

    def total(match: Any) -> dict[str, dict[str, float]]:
        out = {}
        for name in names:
            score = sum((s for (e, d, c), s in scores.items() if e == name and match(d, c)), Score())
            out[name] = {**score.figures(), "chars": score.chars}
        return out

    groups = sorted({(d, c) for (_, d, c) in scores})
    documents = sorted({d for d, _ in groups})
    categories = sorted({c for _, c in groups})
    by_group = {f"{d}/{c}": total(lambda d_, c_, d=d, c=c: (d_, c_) == (d, c)) for d, c in groups}
    by_document = {d: total(lambda d_, c_, d=d: d_ == d) for d in documents}
    by_category = {c: total(lambda d_, c_, c=c: c_ == c) for c in categories}
    overall = total(lambda d_, c_: True)
    targets: dict[str, Any] = {}
    if "rapidocr" in names:
        gaps = {}
        for d in documents:
            single = scores.get(("rapidocr", d, "single"))
            columns = sum((scores.get(("rapidocr", d, c), Score()) for c in COLUMNS), Score())
            if single and columns.chars:
                gaps[d] = round(100 * (columns.figures()["cer"] - single.figures()["cer"]), 2)
        targets["columns_minus_single_cer_points"] = gaps
        targets["columns_within_2_points"] = all(gap <= 2 for gap in gaps.values())
        if "tesseract" in names:
            targets["cer_at_or_below_tesseract"] = overall["rapidocr"]["cer"] <= overall["tesseract"]["cer"]
            targets["order_no_worse_than_tesseract"] = overall["rapidocr"]["order"] <= overall["tesseract"]["order"]
    return {
        "pages_read": count,
        "pages_per_s": {name: round(count / seconds[name], 3) for name in names if seconds[name]},
        "pages_per_cpu_s": {name: round(count / cpu_seconds[name], 3) for name in names if cpu_seconds[name]},
        "load_average": os.getloadavg(),
        "overall": overall,
        "by_category": by_category,
        "by_document": by_document,
        "by_group": by_group,
        "targets": targets,
    }


def table(report: dict[str, Any], names: list[str]) -> str:
    """A Markdown table: CER, WER, bag-of-words WER and words out of order, per group, in percent."""
    head = "| group | pages | " + " | ".join(f"{n} CER | {n} WER | {n} bag WER | {n} order" for n in names) + " |"
    rows = [head, "|" + " --- |" * (2 + 4 * len(names))]
    counts = Counter(f"{row['document']}/{row['category']}" for row in report["pages"])
    counts.update({d: n for d, n in Counter(row["document"] for row in report["pages"]).items()})
    counts.update({f"all {c}": n for c, n in Counter(row["category"] for row in report["pages"]).items()})
    counts["all pages"] = len(report["pages"])
    sections = [report["by_group"], report["by_document"], {f"all {c}": v for c, v in report["by_category"].items()},
                {"all pages": report["overall"]}]  # fmt: skip
    for section in sections:
        for group, figures in section.items():
            cells = []
            for name in names:
                f = figures[name]
                cells.append(" | ".join(f"{100 * f[key]:.2f}" for key in ("cer", "wer", "bag_wer", "order")))
            rows.append(f"| {group} | {counts[group]} | " + " | ".join(cells) + " |")
    wall = ", ".join(f"{name} {value:.2f}" for name, value in report["pages_per_s"].items())
    cpu = ", ".join(f"{name} {value:.2f}" for name, value in report["pages_per_cpu_s"].items())
    return "\n".join(rows) + (
        f"\n\nPages per second of CPU time (one page at a time, one thread each): {cpu}."
        f"\nPages per second of wall-clock time: {wall} (load average at the end: "
        + ", ".join(f"{v:.1f}" for v in report["load_average"]) + ")."
    )


if __name__ == "__main__":
    main()
