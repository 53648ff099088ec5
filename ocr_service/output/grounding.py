"""DeepSeek grounding tags -> labelled spans with boxes, and tag removal.

With a `<|grounding|>` prompt DeepSeek-OCR writes each layout block as

    <|ref|>LABEL<|/ref|><|det|>[[x1, y1, x2, y2], ...]<|/det|>
    the block's text (Markdown; tables as HTML)

and the next block starts at the next `<|ref|>`. Boxes are on a 0..999 grid of the
page. This is the format upstream parses with `re_match` in
deepseek-ai/DeepSeek-OCR `DeepSeek-OCR-vllm/run_dpsk_ocr_pdf.py`; upstream reads the box
list with `eval`, we use `ast.literal_eval` so model output can never run code.
Labels seen in real output: title, sub_title, text, table, image, image_caption,
table_caption, equation, header, footer, page_number.

Other grounding prompts put the recognised text itself inside `<|ref|>` and write
nothing after the box list: `<|grounding|>OCR this image.` (one ref per line of text)
and `Locate <|ref|>TEXT<|/ref|> in the image.` `is_layout` tells the two apart.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass

from ocr_service.deepseek import GRID, SPECIAL_TOKENS

Box = tuple[float, float, float, float]

# One grounded block header: the label and the raw box list.
_REF_DET = re.compile(r"<\|ref\|>(.*?)<\|/ref\|>\s*<\|det\|>(.*?)<\|/det\|>", re.DOTALL)

# Tags that carry no document text. A `<|det|>` box list without its `<|ref|>` (or cut
# off by max_tokens) goes whole; so does an orphan `<|ref|>LABEL<|/ref|>`, whose content
# is a label, not text.
_ORPHAN_DET = re.compile(r"<\|det\|>.*?(?:<\|/det\|>|\Z)", re.DOTALL)
_ORPHAN_REF = re.compile(r"<\|ref\|>.*?(?:<\|/ref\|>|\Z)", re.DOTALL)
_SPECIAL = re.compile("|".join(re.escape(token) for token in SPECIAL_TOKENS))
_MAX_BOX_LIST_CHARS = 20_000  # bounds the literal parser's work on runaway output

# Layout labels of DeepSeek-OCR and DeepSeek-OCR-2 output (plus close variants), used
# only to tell layout output from text-in-ref output.
LAYOUT_LABELS = frozenset(
    {
        "title", "sub_title", "text", "table", "image", "image_caption", "table_caption",
        "table_footnote", "table_title", "figure", "figure_title", "figure_caption", "caption",
        "equation", "formula", "header", "footer", "page_header", "page_footer", "page_number",
        "footnote", "list", "list_item", "code", "algorithm", "abstract", "reference", "seal",
    }
)  # fmt: skip


@dataclass(frozen=True)
class GroundedSpan:
    """One grounded block: its label, its boxes on the 0..999 grid, its cleaned text."""

    label: str
    boxes: tuple[Box, ...]  # empty when the box list was malformed
    text: str


def parse_grounded(text: str) -> tuple[str, list[GroundedSpan]]:
    """Split grounded output into the text before the first block and the blocks.

    Never raises on model output: a malformed box list yields a span with no boxes
    and its text kept.
    """
    matches = list(_REF_DET.finditer(text))
    if not matches:
        return clean_text(text), []
    leading = clean_text(text[: matches[0].start()])
    spans = []
    for number, match in enumerate(matches):
        end = matches[number + 1].start() if number + 1 < len(matches) else len(text)
        spans.append(
            GroundedSpan(
                label=match.group(1).strip(),
                boxes=parse_boxes(match.group(2)),
                text=clean_text(text[match.end() : end]),
            )
        )
    return leading, spans


def is_layout(spans: list[GroundedSpan]) -> bool:
    """True for layout output (label, boxes, then text); False when refs hold the text.

    Text-in-ref output writes nothing after each box list and its refs are arbitrary
    text; layout output has text after most blocks (images aside) and known labels.
    """
    if any(span.text for span in spans):
        return True
    return all(span.label in LAYOUT_LABELS for span in spans)


def parse_boxes(raw: str) -> tuple[Box, ...]:
    """Read a box list like `[[x1, y1, x2, y2], ...]` with a literal parser, never `eval`.

    Boxes that are not four finite numbers are dropped one by one; a list that does
    not parse at all gives no boxes. A single flat `[x1, y1, x2, y2]` is accepted.
    """
    raw = raw.strip()
    if not raw or len(raw) > _MAX_BOX_LIST_CHARS:
        return ()
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return ()
    if _is_box(value):
        value = [value]
    if not isinstance(value, (list, tuple)):
        return ()
    return tuple(tuple(float(v) for v in box) for box in value if _is_box(box))  # type: ignore[misc]


def _is_box(value: object) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    )


def grid_to_pixels(box: Box, width: int, height: int) -> Box:
    """Scale a 0..999 grid box to page pixels (x * width / 999), ordered and clamped to the page."""
    x1, y1, x2, y2 = box
    xs = sorted(_clamp(v * width / GRID, width) for v in (x1, x2))
    ys = sorted(_clamp(v * height / GRID, height) for v in (y1, y2))
    return (xs[0], ys[0], xs[1], ys[1])


def _clamp(value: float, limit: int) -> float:
    return round(min(max(value, 0.0), float(limit)), 2)


def clean_text(text: str) -> str:
    """Remove every grounding tag and special token; keep the document text, trimmed."""
    text = _ORPHAN_DET.sub("", text)
    text = _ORPHAN_REF.sub("", text)
    text = _SPECIAL.sub("", text)
    return _drop_cut_token(text).strip()


def _drop_cut_token(text: str) -> str:
    """Drop a special token cut in half at the very end (output stopped by max_tokens)."""
    start = text.rfind("<", max(0, len(text) - 24))
    if start == -1:
        return text
    tail = text[start:]
    if len(tail) > 1 and any(token.startswith(tail) for token in SPECIAL_TOKENS):
        return text[:start]
    return text
