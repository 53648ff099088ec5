"""One page's engine output -> clean Markdown and blocks in page pixels; pages joined.

Two kinds of engine feed this:
- DeepSeek models put layout in the text as grounding tags (see `grounding.py`); we
  strip the tags from the Markdown and turn the boxes into pixel `Block`s.
- Engines that detect line boxes themselves (RapidOCR) hand us `Block`s; `layout.py`
  puts them in reading order (columns, rows, paragraphs) and writes their text as
  escaped Markdown, with headings, lists and tables only where the geometry shows them.
  DeepSeek's output is Markdown by design and is not escaped.

Decisions:
- A grounded block with several boxes gives one `Block` per box, each carrying the
  block's text (upstream draws and crops each box on its own; a union box would cover
  unrelated page areas when the boxes are far apart). The Markdown holds the text once.
- An `image` block becomes `![](images/page-{page}-{index}.png)` for each of its boxes;
  `index` counts the page's image boxes from 1, in output order, so the k-th image
  `Block` of page p is `images/page-p-k.png` (whoever crops the images uses that name).
- `title` becomes a `# ` heading and `sub_title` a `## ` heading, unless the model
  already wrote a heading (it usually does: "# Title").
- Block text is the Markdown that block contributes (HTML for tables).
- Output whose refs hold the text itself (`<|grounding|>OCR this image.`, `Locate`)
  gives one line of Markdown per ref and blocks labelled "text".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ocr_service.output.blocks import Block
from ocr_service.output.grounding import (
    GroundedSpan,
    clean_text,
    grid_to_pixels,
    is_layout,
    parse_grounded,
)
from ocr_service.output.layout import lay_out

# The separator DeepSeek's own PDF script (run_dpsk_ocr_pdf.py) writes between pages.
PAGE_SEPARATOR = "\n<--- Page Split --->\n"

_HEADINGS = {"title": "# ", "sub_title": "## "}
_BLANK_LINES = re.compile(r"\n{3,}")


@dataclass(frozen=True)
class PageResult:
    """A finished page as users see it."""

    markdown: str
    blocks: list[Block]
    finish_reason: str
    # finish_reason == "length": the page hit max_tokens, usually a repetition loop.
    # Never to be shown as a clean success.
    truncated: bool
    page: int | None = None  # 1-based page number, when known
    # The pixel size of the page image the engine read: the space `blocks` are in.
    width: int = 0
    height: int = 0
    warnings: tuple[str, ...] = ()  # what the engine could not do as asked, or did incompletely

    def as_dict(self) -> dict:
        out: dict = {} if self.page is None else {"page": self.page}
        out.update(
            markdown=self.markdown,
            blocks=[block.as_dict() for block in self.blocks],
            finish_reason=self.finish_reason,
            truncated=self.truncated,
            width=self.width,
            height=self.height,
        )
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PageResult:
        """The page `as_dict` wrote (a stored task read back)."""
        return cls(
            markdown=data["markdown"],
            blocks=[Block(b["label"], tuple(b["bbox"]), b["text"]) for b in data["blocks"]],
            finish_reason=data["finish_reason"],
            truncated=data["truncated"],
            page=data.get("page"),
            warnings=tuple(data.get("warnings", ())),
        )


def build_page(
    text: str,
    finish_reason: str,
    width: int,
    height: int,
    page_number: int,
    blocks: Sequence[Block] | None = None,
) -> PageResult:
    """Turn one page's engine output into a `PageResult`.

    `width`/`height` are the pixel size of the page image the engine saw; `page_number`
    is 1-based and names the page's image references.
    """
    if blocks:
        page = lay_out(blocks)
        markdown, kept = page.markdown, page.blocks
    elif blocks is not None:  # the engine detected nothing
        markdown, kept = clean_text(text), []
    else:
        markdown, kept = _from_grounded_text(text, width, height, page_number)
    return PageResult(
        markdown=markdown,
        blocks=kept,
        finish_reason=finish_reason,
        truncated=finish_reason == "length",
        page=page_number,
        width=width,
        height=height,
    )


def join_pages(markdowns: Sequence[str]) -> str:
    """Join pages' Markdown in order with the upstream page separator."""
    return PAGE_SEPARATOR.join(markdowns)


def image_name(page_number: int, index: int) -> str:
    """Where the Markdown says the `index`-th (1-based) image region of a page lives."""
    return f"images/page-{page_number}-{index}.png"


def _from_grounded_text(text: str, width: int, height: int, page_number: int) -> tuple[str, list[Block]]:
    """Grounded DeepSeek output -> Markdown parts and one Block per box."""
    leading, spans = parse_grounded(text)
    if spans and not is_layout(spans):
        return _from_text_refs(leading, spans, width, height)
    parts = [leading] if leading else []
    blocks: list[Block] = []
    images = 0
    for span in spans:
        body = _as_heading(span.label, span.text)
        for box in span.boxes:
            blocks.append(Block(label=span.label, bbox=grid_to_pixels(box, width, height), text=body))
            if span.label == "image":
                images += 1
                parts.append(f"![]({image_name(page_number, images)})")
        if body:
            parts.append(body)
    return _BLANK_LINES.sub("\n\n", "\n\n".join(parts)).strip(), blocks


def _from_text_refs(
    leading: str, spans: list[GroundedSpan], width: int, height: int
) -> tuple[str, list[Block]]:
    """Refs that hold the recognised text: one Markdown line and one block per box each."""
    lines = [leading] if leading else []
    blocks: list[Block] = []
    for span in spans:
        line = clean_text(span.label)
        if line:
            lines.append(line)
        blocks.extend(Block(label="text", bbox=grid_to_pixels(box, width, height), text=line) for box in span.boxes)
    return "\n".join(lines).strip(), blocks


def _as_heading(label: str, text: str) -> str:
    """Make title/sub_title a Markdown heading unless the model already wrote one."""
    prefix = _HEADINGS.get(label)
    if prefix is None or not text or text.startswith("#"):
        return text
    return prefix + " ".join(text.split())
