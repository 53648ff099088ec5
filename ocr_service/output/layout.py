"""Line boxes -> reading order and Markdown structure (columns, lines, paragraphs, headings, lists, tables).

Line engines (RapidOCR) return one box per text line, in no useful order. A page is read
in five steps, all on the boxes' geometry:

1. Skew. A scan turned by a small angle gives lines whose boxes are taller than the text
   and drift down the page. The angle is the one at which the boxes' left edges, right
   edges and centre lines line up best (a projection profile of box edges, searched in
   0.1 degree steps up to the steepest angle any box allows); every box is turned back
   by it before anything else, and stays as given in the output.
2. Rows. Boxes whose centres lie within a fixed tolerance (0.4 of the median line
   height or line pitch, whichever is smaller) of a row's first box form one row. The
   tolerance never grows with the row, so rows of two columns offset by half a line
   cannot chain into one.
3. Columns: a recursive XY-cut over the rows. Consecutive rows that one vertical gap runs
   through form a band (a title across two columns ends one; so does a blank stretch
   of a line or more, unless the same gutter goes on below it). A band's gap is a column
   gutter when the rows on its two sides sit beside each other (within 0.75 line pitch,
   not taking turns down the page like indented code) and either do not share
   baselines but both run line after line (not the labels of a definition list, a
   paragraph apart), or share them and both sides are wide (a fifth of the band or more)
   and hold six or more lines of text each, not rows of table cells (an index entry with
   its page numbers counts as a line). Otherwise the gap is inside table rows, between
   code and its comments, or between a TOC title and its page number, and the rows are
   read across. Columns are read left to right; on each side, rows are formed anew (so
   boxes of the other column cannot anchor them) and cut again the same way. Known
   limit: a two-column table of six or more rows whose cells are single lines, on one
   baseline grid, reads as two columns (geometry alone cannot tell it from an index).
4. Blocks. Consecutive rows of a column form a paragraph until the next row is more
   than 1.45 line pitches lower or does not overlap it sideways. A row clearly taller
   than the page's lines (1.5 x the median height; 2 x for a top-level heading) is a
   heading; two or more rows that start at one x with a bullet glyph, or with numbers
   counting up ("1.", "2."), are a list ("-", "*" and "+" are not taken as bullets: in
   manuals they start diffs, options and code as often); three or more rows split into
   the same aligned cells (gaps over a line height) are a table, unless their last cells
   are page numbers (a table of contents keeps "title 12" on one line).
5. Markdown. Recognised text is escaped (`escape.escape_markdown`), so only the
   structure found here is Markdown syntax. A paragraph keeps one source line per page
   line (they render as one paragraph).

Worked example: a title over two columns whose lines are offset by half a line (the
layout that a growing line tolerance reads as one interleaved line per row):

>>> from ocr_service.output.blocks import Block
>>> boxes = [
...     Block("text", (100, 40, 860, 90), "Two Columns"),         # title, 50 px tall
...     Block("text", (100, 120, 450, 145), "left one"),          # left column, pitch 30
...     Block("text", (520, 135, 860, 160), "right one"),         # right column, 15 px lower
...     Block("text", (100, 150, 450, 175), "left two"),
...     Block("text", (520, 165, 860, 190), "right two"),
...     Block("text", (100, 180, 300, 205), "left three"),
... ]
>>> page = lay_out(boxes)
>>> [block.text for block in page.blocks]
['Two Columns', 'left one', 'left two', 'left three', 'right one', 'right two']
>>> print(page.markdown)
# Two Columns
<BLANKLINE>
left one
left two
left three
<BLANKLINE>
right one
right two
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ocr_service.output.blocks import Block
from ocr_service.output.escape import escape_markdown

# Skew search: 0.1 degree steps up to this angle.
_MAX_SKEW_DEGREES = 5.0
# An angle is used only when it lines edges up clearly better than no turn at all.
_SKEW_GAIN = 1.1
# Rows: a box joins a row when its centre is this close to the row's first box
# (as a fraction of the smaller of median line height and line pitch).
_ROW_TOLERANCE = 0.4
# Columns: rows of two sides "sit beside each other" within this many line pitches.
_BESIDE = 0.75
# Columns that share baselines must each be at least this share of the region's width,
# and at most this share of their rows may be split into cells (other than page numbers).
_MIN_COLUMN_SHARE = 0.2
_MAX_TABLE_ROWS = 0.2
# ... and hold at least this many rows each.
_MIN_GRID_ROWS = 6
# Columns run line after line: the median step between a side's rows is under this many pitches.
_DENSE_PITCHES = 1.9
# A new paragraph starts when the next row is more than this many pitches lower.
_PARAGRAPH_PITCHES = 1.45
# Headings: row height over the median line height.
_SUB_HEADING_RATIO = 1.5
_HEADING_RATIO = 2.0
_MAX_HEADING_CHARS = 80
# Cells: boxes in a row further apart than this many line heights.
_CELL_GAP = 1.0
# Bounds the geometry work on a page an attacker filled with boxes: past this many
# boxes, rows are read top to bottom without looking for columns.
_MAX_BOXES_FOR_COLUMNS = 3000
_MAX_GAPS_TRIED = 8  # a gutter is among a region's widest gaps
_MAX_DEPTH = 40  # nested cuts; real pages need a handful

# Typographic bullets only: a line that starts with "-", "+" or "*" is as likely a diff,
# an option or code as a list item.
_BULLET = re.compile(r"^([•●○◦▪■□‣∙·])\s*(\S.*)$")
_NUMBERED = re.compile(r"^(\d{1,3})([.)])\s+(\S.*)$")
# Page numbers after a TOC or index entry: "12", ". . 12", "xii", "95, 135", "12-14".
_PAGE_NUMBERS = re.compile(r"^[.·…\s]*(?:\d{1,4}|[ivxlcdm]{1,7})(?:\s*[,–-]\s*(?:\d{1,4}|[ivxlcdm]{1,7}))*$")


@dataclass(frozen=True)
class PageLayout:
    """A page read in order: the line blocks in reading order and their Markdown."""

    blocks: list[Block]
    markdown: str


def lay_out(blocks: Sequence[Block]) -> PageLayout:
    """Put line boxes in reading order and render their text as structured Markdown."""
    items = _deskewed([block for block in blocks if block.text.strip()])
    if not items:
        return PageLayout([], "")
    scale = _Scale.of(items)
    rows = _rows(items, scale.row_tolerance)
    if len(items) <= _MAX_BOXES_FOR_COLUMNS:
        rows = _segment(rows, scale)
    units = _units(rows, scale)
    ordered = [item.block for row in rows for item in row.items]
    return PageLayout(ordered, _join(units))


# -- geometry ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    """A line box turned back by the page's skew (x1, y1, x2, y2), with the block it came from."""

    block: Block
    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def cy(self) -> float:
        return (self.y1 + self.y2) / 2

    @property
    def height(self) -> float:
        return self.y2 - self.y1


@dataclass
class _Row:
    """Boxes on one text line, left to right (a part of one, once columns are cut)."""

    items: list[_Item]

    @property
    def x1(self) -> float:
        return min(item.x1 for item in self.items)

    @property
    def x2(self) -> float:
        return max(item.x2 for item in self.items)

    @property
    def cy(self) -> float:
        return statistics.median(item.cy for item in self.items)

    @property
    def height(self) -> float:
        return statistics.median(item.height for item in self.items)

    @property
    def text(self) -> str:
        return _text(self.items)

    def cells(self, gap: float) -> list[list[_Item]]:
        """The row's boxes, split into cells where they are more than `gap` apart."""
        cells: list[list[_Item]] = []
        for item in self.items:
            if cells and item.x1 - cells[-1][-1].x2 <= gap:
                cells[-1].append(item)
            else:
                cells.append([item])
        return cells


def _text(items: list[_Item]) -> str:
    return " ".join(" ".join(item.block.text.split()) for item in items)


@dataclass(frozen=True)
class _Scale:
    """The page's typical line height and line pitch (centre to centre), in pixels."""

    height: float
    pitch: float

    @property
    def row_tolerance(self) -> float:
        """How far a box's centre may lie from its row's first box."""
        return _ROW_TOLERANCE * min(self.height, self.pitch)

    @classmethod
    def of(cls, items: list[_Item]) -> _Scale:
        height = max(statistics.median(item.height for item in items), 1.0)
        return cls(height, _pitch(items, height))


def _pitch(items: list[_Item], height: float) -> float:
    """Median distance from a box to the nearest box below it that it overlaps horizontally."""
    ordered = sorted(items, key=lambda item: item.cy)
    steps = []
    for number, item in enumerate(ordered):
        for below in ordered[number + 1 : number + 60]:
            step = below.cy - item.cy
            if step > 0.5 * min(item.height, below.height) and below.x1 < item.x2 and below.x2 > item.x1:
                steps.append(step)
                break
    return statistics.median(steps) if steps else 1.2 * height


def _deskewed(blocks: list[Block]) -> list[_Item]:
    """Boxes turned back by the page's skew angle, as the text lines' own rectangles."""
    if not blocks:
        return []
    boxes = np.array([block.bbox for block in blocks], dtype=float)
    angle = _skew_angle(boxes)
    width, height = _line_size(boxes, abs(angle))
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    x = cx * math.cos(angle) + cy * math.sin(angle)
    y = -cx * math.sin(angle) + cy * math.cos(angle)
    return [
        _Item(block, float(x[i] - width[i] / 2), float(y[i] - height[i] / 2), float(x[i] + width[i] / 2),
              float(y[i] + height[i] / 2))
        for i, block in enumerate(blocks)
    ]  # fmt: skip


def _line_size(boxes: np.ndarray, angle: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Length and height of the rectangles turned by `angle` whose upright bounding boxes are `boxes`.

    A w x h rectangle turned by a has a bounding box W = w cos a + h sin a wide and
    H = w sin a + h cos a tall; this solves for w and h (kept above a quarter of the
    box, for boxes that are not one turned line).
    """
    big_w, big_h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cos, sin = np.cos(angle), np.sin(angle)
    denominator = np.cos(2 * np.asarray(angle))
    width = (big_w * cos - big_h * sin) / denominator
    height = (big_h * cos - big_w * sin) / denominator
    return np.maximum(width, 0.25 * big_w), np.maximum(height, 0.25 * big_h)


def _skew_angle(boxes: np.ndarray) -> float:
    """The page's skew in radians: the turn that lines up box edges and centre lines best.

    A line turned by a has a box at least W sin a tall, so no angle steeper than the
    flattest box allows is tried. Ties go to the smallest turn.
    """
    big_w, big_h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    if len(boxes) < 3 or not np.all(big_w > 0):
        return 0.0
    steepest = min(float(np.min(np.arctan(big_h / big_w))), math.radians(_MAX_SKEW_DEGREES))
    steps = int(math.degrees(steepest) * 10)
    if steps < 1:
        return 0.0
    angles = np.radians(np.arange(-steps, steps + 1) / 10)[:, None]  # (angles, 1)
    width, _ = _line_size(boxes, np.abs(angles))
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    x = cx * np.cos(angles) + cy * np.sin(angles)
    y = -cx * np.sin(angles) + cy * np.cos(angles)
    bin_size = max(0.25 * float(np.median(big_h)), 1.0)
    scores = _sharpness(x - width / 2, bin_size) + _sharpness(x + width / 2, bin_size) + _sharpness(y, bin_size)
    straight = steps  # index of angle 0
    best = int(np.argmax(scores - 1e-9 * np.abs(np.arange(-steps, steps + 1))))
    if scores[best] < _SKEW_GAIN * scores[straight]:
        return 0.0
    return float(angles[best, 0])


def _sharpness(values: np.ndarray, bin_size: float) -> np.ndarray:
    """Per row of `values`: the sum of squared histogram counts (high when values cluster)."""
    low = values.min(axis=1, keepdims=True)
    total = np.zeros(values.shape[0])
    for offset in (0.0, 0.5):  # two bin phases, so a cluster split by a bin edge still counts
        bins = np.floor((values - low) / bin_size + offset).astype(np.int64)
        for row, row_bins in enumerate(bins):
            counts = np.bincount(row_bins)
            total[row] += float(np.dot(counts, counts))
    return total


def _rows(items: list[_Item], tolerance: float) -> list[_Row]:
    """Group boxes into rows, top to bottom: a box joins the row whose first box's centre is within `tolerance`."""
    rows: list[_Row] = []
    anchor = -math.inf
    for item in sorted(items, key=lambda item: item.cy):
        if rows and item.cy - anchor <= tolerance:
            rows[-1].items.append(item)
        else:
            rows.append(_Row([item]))
            anchor = item.cy
    for row in rows:
        row.items.sort(key=lambda item: item.x1)
    return rows


# -- columns: recursive XY-cut over rows --------------------------------------------------


def _segment(rows: list[_Row], scale: _Scale, depth: int = 0) -> list[_Row]:
    """The rows in reading order, cut into columns where the page has them."""
    if len(rows) < 2 or depth > _MAX_DEPTH:
        return rows
    bands = _bands(rows, scale)
    if len(bands) > 1:
        return [row for band in bands for row in _segment(band, scale, depth + 1)]
    cut = _column_cut(rows, scale)
    if cut is None:
        return rows
    return _segment(cut.left, scale, depth + 1) + _segment(cut.right, scale, depth + 1)


def _bands(rows: list[_Row], scale: _Scale) -> list[list[_Row]]:
    """Runs of consecutive rows that one vertical gap runs through, to be read one after another.

    A blank stretch of a line pitch or more across the region also ends a run; runs on
    both sides of one are joined again when the same column gutter runs through both
    (two columns that leave space at the same height are still two columns).
    """
    runs: list[list[_Row]] = []
    coverage = _Coverage(0.2 * scale.height)
    bottom = -math.inf
    for row in rows:
        trial = coverage.copy()
        for item in row.items:
            trial.add(item.x1, item.x2)
        top = min(item.y1 for item in row.items)
        if runs and trial.has_gap() and top - bottom < scale.pitch:
            runs[-1].append(row)
            coverage = trial
        else:
            runs.append([row])
            coverage = _Coverage(0.2 * scale.height)
            for item in row.items:
                coverage.add(item.x1, item.x2)
        bottom = max(bottom, max(item.y2 for item in row.items))
    bands = [runs[0]]
    for run in runs[1:]:
        if _same_gutter(bands[-1], run, scale):
            bands[-1] = bands[-1] + run
        else:
            bands.append(run)
    return bands


def _same_gutter(above: list[_Row], below: list[_Row], scale: _Scale) -> bool:
    upper, lower = _column_cut(above, scale), _column_cut(below, scale)
    if upper is None or lower is None or upper.gap[1] <= lower.gap[0] or lower.gap[1] <= upper.gap[0]:
        return False
    return _column_cut(above + below, scale) is not None


@dataclass
class _Coverage:
    """The x-intervals covered by boxes, merged; gaps narrower than `min_gap` do not count."""

    min_gap: float
    spans: list[list[float]] = field(default_factory=list)

    def copy(self) -> _Coverage:
        return _Coverage(self.min_gap, [span[:] for span in self.spans])

    def add(self, x1: float, x2: float) -> None:
        kept = []
        for span in self.spans:
            if span[1] + self.min_gap < x1 or x2 + self.min_gap < span[0]:
                kept.append(span)
            else:
                x1, x2 = min(x1, span[0]), max(x2, span[1])
        kept.append([x1, x2])
        self.spans = sorted(kept)

    def has_gap(self) -> bool:
        return len(self.spans) > 1

    def gaps(self) -> list[tuple[float, float]]:
        return [(a[1], b[0]) for a, b in zip(self.spans, self.spans[1:], strict=False)]


@dataclass(frozen=True)
class _Cut:
    """Rows split at a column gutter: the rows' parts on each side, and the gap (x1, x2)."""

    left: list[_Row]
    right: list[_Row]
    gap: tuple[float, float]


def _column_cut(rows: list[_Row], scale: _Scale) -> _Cut | None:
    """The rows split at the widest vertical gap through all of them that is a column gutter, or None."""
    items = [item for row in rows for item in row.items]
    coverage = _Coverage(0.2 * scale.height)
    for item in items:
        coverage.add(item.x1, item.x2)
    width = coverage.spans[-1][1] - coverage.spans[0][0] if coverage.spans else 0.0
    for start, end in sorted(coverage.gaps(), key=lambda gap: gap[0] - gap[1])[:_MAX_GAPS_TRIED]:
        left_items = [item for item in items if item.x2 <= start]
        right_items = [item for item in items if item.x1 >= end]
        # Rows again on each side: boxes of the other side no longer anchor them.
        left, right = _rows(left_items, scale.row_tolerance), _rows(right_items, scale.row_tolerance)
        if _is_gutter(left, right, width, scale):
            return _Cut(left, right, (start, end))
    return None


def _is_gutter(left: list[_Row], right: list[_Row], width: float, scale: _Scale) -> bool:
    """Whether two sides of a gap are columns (read one after the other), not cells of rows."""
    fewer, more = (left, right) if len(left) <= len(right) else (right, left)
    if not fewer:
        return False
    # From each row on one side to the nearest box on the other (boxes, not rows: a row
    # there may hold boxes of two baselines, a page number and the next column's line).
    centres = sorted(item.cy for row in more for item in row.items)
    distances = [_nearest(centres, row.cy) for row in fewer]
    if sum(1 for d in distances if d <= _BESIDE * scale.pitch) < 0.5 * len(fewer):
        return False  # the sides take turns down the page: indented lines of one column
    if sum(1 for d in distances if d <= scale.row_tolerance) < 0.6 * len(fewer):
        # Side by side on baselines of their own: columns, if both run line after line
        # (the labels of a definition list stand a paragraph apart).
        return _dense(left, scale) and _dense(right, scale)
    # Shared baselines: a table, a table of contents, code with comments, or columns set
    # on one grid. Such columns run for several lines, are wide, and hold lines of text
    # (or index entries with their page numbers), not rows of table cells.
    wide = max(_MIN_COLUMN_SHARE * width, 6 * scale.height)
    return min(len(left), len(right)) >= _MIN_GRID_ROWS and all(
        _extent(side) >= wide and _table_rows(side, scale) <= _MAX_TABLE_ROWS * len(side) for side in (left, right)
    )


def _dense(rows: list[_Row], scale: _Scale) -> bool:
    """Whether the rows follow one another at about the line pitch (median step under 1.9 pitches)."""
    steps = [lower.cy - upper.cy for upper, lower in itertools.pairwise(rows)]
    return not steps or statistics.median(steps) < _DENSE_PITCHES * scale.pitch


def _table_rows(rows: list[_Row], scale: _Scale) -> int:
    """How many of the rows are split into cells, other than an index entry and its page numbers."""
    count = 0
    for row in rows:
        cells = row.cells(_CELL_GAP * scale.height)
        count += len(cells) > 2 or (len(cells) == 2 and not _PAGE_NUMBERS.match(_text(cells[-1])))
    return count


def _nearest(sorted_values: list[float], value: float) -> float:
    index = bisect.bisect_left(sorted_values, value)
    neighbours = sorted_values[max(index - 1, 0) : index + 1]
    return min(abs(value - other) for other in neighbours)


def _extent(rows: list[_Row]) -> float:
    return max(row.x2 for row in rows) - min(row.x1 for row in rows)


# -- blocks: paragraphs, headings, lists, tables ----------------------------------------


@dataclass
class _Unit:
    """A block of the page's Markdown: its kind and its rows."""

    kind: str  # "paragraph", "heading", "item" or "table"
    rows: list[_Row]
    level: int = 0  # heading level
    marker: str = ""  # list marker as written: "-" or "3." / "3)"
    list_number: int | None = None  # which list of the page the item belongs to
    table: list[list[str]] | None = None  # a table's cell texts, row by row

    def markdown(self) -> str:
        if self.kind == "heading":
            return "#" * self.level + " " + escape_markdown(" ".join(row.text for row in self.rows))
        if self.table is not None:
            return _table_markdown(self.table)
        lines = [escape_markdown(row.text) for row in self.rows]
        if self.list_number is not None:
            body = _item_body(self.rows[0].text)
            indent = " " * (len(self.marker) + 1)
            return "\n".join([f"{self.marker} {escape_markdown(body)}"] + [indent + line for line in lines[1:]])
        return "\n".join(lines)


def _join(units: list[_Unit]) -> str:
    """Blocks apart by a blank line; the items of one list on consecutive lines (a tight list)."""
    parts: list[str] = []
    for number, unit in enumerate(units):
        if number:
            same_list = unit.list_number is not None and unit.list_number == units[number - 1].list_number
            parts.append("\n" if same_list else "\n\n")
        parts.append(unit.markdown())
    return "".join(parts)


def _units(rows: list[_Row], scale: _Scale) -> list[_Unit]:
    """Consecutive rows -> paragraphs, headings, list items and tables."""
    tables = _tables(rows, scale)
    in_tables = {number for start, table in tables.items() for number in range(start, start + len(table))}
    units: list[_Unit] = []
    for number, row in enumerate(rows):
        if number in tables:
            units.append(_Unit("table", rows[number : number + len(tables[number])], table=tables[number]))
        if number in in_tables:
            continue
        kind, level = _row_kind(row, scale)
        last = units[-1] if units else None
        if last is not None and _follows(last.rows[-1], row, scale) and _extends(last, kind, level):
            last.rows.append(row)
        else:
            units.append(_Unit(kind, [row], level=level, marker=_marker(row.text) if kind == "item" else ""))
    _mark_lists(units, scale)
    return _rejoin(units, scale)


def _rejoin(units: list[_Unit], scale: _Scale) -> list[_Unit]:
    """Items that are no list member are lines of the paragraph around them again."""
    joined: list[_Unit] = []
    for unit in units:
        if unit.kind == "item" and unit.list_number is None:
            unit.kind = "paragraph"
        last = joined[-1] if joined else None
        if last is not None and unit.kind == last.kind == "paragraph" and _follows(last.rows[-1], unit.rows[0], scale):
            last.rows.extend(unit.rows)
        else:
            joined.append(unit)
    return joined


def _row_kind(row: _Row, scale: _Scale) -> tuple[str, int]:
    text = row.text
    ratio = row.height / scale.height
    letters = sum(char.isalpha() for char in text)
    if ratio >= _SUB_HEADING_RATIO and letters >= 3 and len(text) <= _MAX_HEADING_CHARS and text[-1] not in ",;":
        return "heading", 1 if ratio >= _HEADING_RATIO else 2
    if _BULLET.match(text) or _NUMBERED.match(text):
        return "item", 0
    return "paragraph", 0


def _follows(previous: _Row, row: _Row, scale: _Scale) -> bool:
    """Whether `row` is the next line of the same column block as `previous`."""
    step = row.cy - previous.cy
    size = max(1.0, (previous.height + row.height) / (2 * scale.height))
    overlaps = row.x1 < previous.x2 and row.x2 > previous.x1
    return overlaps and 0 < step <= _PARAGRAPH_PITCHES * scale.pitch * size


def _extends(unit: _Unit, kind: str, level: int) -> bool:
    """Whether a row of `kind` continues `unit` (given that it follows its last row)."""
    if unit.kind == "heading":
        return kind == "heading" and level == unit.level and len(unit.rows) < 3
    return unit.kind != "table" and kind == "paragraph"  # a paragraph's next line, or an item's continuation line


def _marker(text: str) -> str:
    numbered = _NUMBERED.match(text)
    return numbered.group(1) + numbered.group(2) if numbered else "-"


def _item_body(text: str) -> str:
    match = _BULLET.match(text) or _NUMBERED.match(text)
    return match.groups()[-1] if match else text


def _mark_lists(units: list[_Unit], scale: _Scale) -> None:
    """Items become a list when two or more follow each other with their markers at one x.

    Numbered items must count up by one. A lone item stays a paragraph, its marker
    escaped as text.
    """
    run: list[_Unit] = []
    lists = 0
    for unit in [*units, None]:
        if unit is not None and run and _next_item(run[0], run[-1], unit, scale):
            run.append(unit)
            continue
        if len(run) >= 2:
            lists += 1
            for member in run:
                member.list_number = lists
        run = [unit] if unit is not None and unit.kind == "item" else []


def _next_item(first: _Unit, previous: _Unit, unit: _Unit, scale: _Scale) -> bool:
    if unit.kind != "item" or abs(unit.rows[0].x1 - first.rows[0].x1) > 0.5 * scale.height:
        return False
    if previous.marker == "-" or unit.marker == "-":
        return previous.marker == unit.marker
    same_delimiter = previous.marker[-1] == unit.marker[-1]
    return same_delimiter and int(unit.marker[:-1]) == int(previous.marker[:-1]) + 1


def _tables(rows: list[_Row], scale: _Scale) -> dict[int, list[list[str]]]:
    """Tables among the rows, by the index of their first row: each its cell texts, row by row."""
    tables: dict[int, list[list[str]]] = {}
    start = 0
    while start < len(rows):
        end = start + 1
        if len(rows[start].cells(_CELL_GAP * scale.height)) > 1:
            while (
                end < len(rows)
                and len(rows[end].cells(_CELL_GAP * scale.height)) > 1
                and _follows(rows[end - 1], rows[end], scale)
            ):
                end += 1
            table = _table(rows[start:end], scale)
            if table is not None:
                tables[start] = table
        start = end
    return tables


def _table(rows: list[_Row], scale: _Scale) -> list[list[str]] | None:
    """The rows' cell texts when they form a table: 3+ rows, the same 2+ cells, aligned columns.

    Rows whose last cells are all page numbers are a table of contents, not a table:
    each stays one line, title then number.
    """
    cells = [row.cells(_CELL_GAP * scale.height) for row in rows]
    count = len(cells[0])
    if len(rows) < 3 or count < 2 or any(len(row) != count for row in cells):
        return None
    if all(_PAGE_NUMBERS.match(_text(row[-1])) for row in cells):
        return None
    for upper, lower in itertools.pairwise(cells):
        for above, below in zip(upper, lower, strict=True):
            if not (below[0].x1 < above[-1].x2 and below[-1].x2 > above[0].x1):
                return None  # a cell that does not sit under the one above it
    return [[_text(cell) for cell in row] for row in cells]


def _table_markdown(table: list[list[str]]) -> str:
    """A GFM table; the first row is the header (GFM requires one)."""
    lines = ["| " + " | ".join(escape_markdown(cell) for cell in row) + " |" for row in table]
    lines.insert(1, "|" + " --- |" * len(table[0]))
    return "\n".join(lines)
