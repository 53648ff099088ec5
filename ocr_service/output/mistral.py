"""A finished page in Mistral OCR's vocabulary: image ids, block types, extracted tables, header and footer.

`mistral_page` turns a `PageResult` into what `POST /v1/ocr` answers for that page. The
page's own Markdown is kept; only these edits are made to it:
- image references `![](images/page-P-N.png)` become Mistral's `![img-K.png](img-K.png)`,
  where `img-K.png` is the image's `id`. K counts the images of the whole answer from 0, in
  page order, as Mistral numbers them; an image left out (`image_limit`, `image_min_size`,
  an empty box) loses its reference and its block;
- with `table_format="html"` each table's HTML is replaced by a `[tbl-K.html](tbl-K.html)`
  link and the HTML moves to the page's `tables`;
- with `extract_header` / `extract_footer` the header (footer) blocks' text moves from the
  Markdown to the page's `header` (`footer`).

Block types, from DeepSeek's grounding labels (the only labels the engines write are in the
first column; RapidOCR's line boxes are `text`):

| DeepSeek label                                                | Mistral block type |
|---------------------------------------------------------------|--------------------|
| title, sub_title (`## ` heading kept in `content`)             | title              |
| text, abstract, footnote, and any label not listed here        | text               |
| table                                                         | table              |
| image                                                         | image              |
| image_caption, table_caption, figure_caption, figure_title, table_title, table_footnote, caption | caption |
| equation, formula                                             | equation           |
| header, page_header                                           | header             |
| footer, page_footer, page_number                              | footer             |
| list, list_item                                               | list               |
| code, algorithm                                               | code               |
| reference                                                     | references         |
| seal                                                          | signature          |

Mistral's `aside_text` has no DeepSeek counterpart. Corners are whole pixels of the page
image the engine read, as the page-image API crops them (`page_images.crop_box`): the box's
top-left rounded down, its bottom-right rounded up, inside the page.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ocr_service.output.blocks import Block
from ocr_service.output.page_images import crop_box
from ocr_service.output.pages import PageResult, image_name

BLOCK_TYPES = {
    "title": "title",
    "sub_title": "title",
    "text": "text",
    "abstract": "text",
    "footnote": "text",
    "table": "table",
    "image": "image",
    "image_caption": "caption",
    "table_caption": "caption",
    "figure_caption": "caption",
    "figure_title": "caption",
    "table_title": "caption",
    "table_footnote": "caption",
    "caption": "caption",
    "equation": "equation",
    "formula": "equation",
    "header": "header",
    "page_header": "header",
    "footer": "footer",
    "page_footer": "footer",
    "page_number": "footer",
    "list": "list",
    "list_item": "list",
    "code": "code",
    "algorithm": "code",
    "reference": "references",
    "seal": "signature",
}
_BLANK_LINES = re.compile(r"\n{3,}")


def block_type(label: str) -> str:
    """Mistral's block type for a DeepSeek label (`text` for one it has no match for).

    >>> block_type("sub_title"), block_type("image_caption"), block_type("page_number"), block_type("doodle")
    ('title', 'caption', 'footer', 'text')
    """
    return BLOCK_TYPES.get(label, "text")


@dataclass(frozen=True)
class Corners:
    top_left_x: int
    top_left_y: int
    bottom_right_x: int
    bottom_right_y: int

    @classmethod
    def of(cls, bbox: tuple[float, float, float, float], width: int, height: int) -> Corners:
        """Whole pixels covering `bbox`, inside the page (unclamped when its size is unknown).

        >>> Corners.of((10.4, 20.6, 30.2, 40.0), 35, 100)
        Corners(top_left_x=10, top_left_y=20, bottom_right_x=31, bottom_right_y=40)
        """
        if width and height:
            return cls(*crop_box(bbox, width, height))
        x1, y1, x2, y2 = bbox
        return cls(math.floor(x1), math.floor(y1), math.ceil(x2), math.ceil(y2))

    @property
    def size(self) -> tuple[int, int]:
        return self.bottom_right_x - self.top_left_x, self.bottom_right_y - self.top_left_y


@dataclass(frozen=True)
class PageImage:
    id: str
    corners: Corners


@dataclass(frozen=True)
class PageTable:
    id: str
    content: str
    format: str


@dataclass(frozen=True)
class PageBlock:
    type: str
    corners: Corners
    content: str
    image_id: str | None = None
    table_id: str | None = None


@dataclass(frozen=True)
class MistralOptions:
    """What the request asked of images, tables, header and footer."""

    image_limit: int | None = None  # images in the whole answer
    image_min_size: int | None = None  # pixels, both sides
    table_format: str | None = None  # None (tables stay in the Markdown) or "html"
    extract_header: bool = False
    extract_footer: bool = False


@dataclass(frozen=True)
class MistralPage:
    markdown: str
    images: list[PageImage]
    tables: list[PageTable]
    header: str | None
    footer: str | None
    blocks: list[PageBlock]


def mistral_page(page: PageResult, options: MistralOptions, images_before: int = 0, tables_before: int = 0) -> MistralPage:
    """The page as Mistral answers it; `images_before` and `tables_before` are the images and
    tables of earlier pages in the same answer (their ids count on from there)."""
    edits: list[tuple[int, int, str]] = []  # (start, end, replacement) in page.markdown
    cursor = 0
    images: list[PageImage] = []
    tables: list[PageTable] = []
    moved: dict[str, list[str]] = {"header": [], "footer": []}
    blocks: list[PageBlock] = []
    image_number = 0
    for group in _spans(page.blocks):
        kind = block_type(group[0].label)
        if kind == "image":
            for block in group:
                image_number += 1
                corners = Corners.of(block.bbox, page.width, page.height)
                kept = _keep_image(corners, options, images_before + len(images))
                reference = f"![]({image_name(page.page or 1, image_number)})"
                image_id = f"img-{images_before + len(images)}.png" if kept else None
                cursor = _edit(page.markdown, cursor, reference, f"![{image_id}]({image_id})" if image_id else "", edits)
                if image_id is not None:
                    images.append(PageImage(image_id, corners))
                    blocks.append(PageBlock("image", corners, block.text, image_id=image_id))
            continue
        table_id = None
        text = group[0].text
        if kind == "table" and options.table_format == "html" and text:
            candidate = f"tbl-{tables_before + len(tables)}.html"
            found = _edit(page.markdown, cursor, text, f"[{candidate}]({candidate})", edits)
            if found != cursor:
                cursor, table_id = found, candidate
                tables.append(PageTable(candidate, text, "html"))
        elif kind in moved and text and (options.extract_header if kind == "header" else options.extract_footer):
            found = _edit(page.markdown, cursor, text, "", edits)
            if found != cursor:
                cursor = found
                moved[kind].append(text)
        blocks.extend(
            PageBlock(kind, Corners.of(block.bbox, page.width, page.height), block.text, table_id=table_id)
            for block in group
        )
    return MistralPage(
        markdown=_apply(page.markdown, edits),
        images=images,
        tables=tables,
        header="\n\n".join(moved["header"]) if options.extract_header else None,
        footer="\n\n".join(moved["footer"]) if options.extract_footer else None,
        blocks=blocks,
    )


def _spans(blocks: Sequence[Block]) -> list[list[Block]]:
    """Consecutive blocks of one grounded block (same label and text: one per box), grouped;
    images stay one group per run, each box its own image."""
    groups: list[list[Block]] = []
    for block in blocks:
        if groups and groups[-1][0].label == block.label and groups[-1][0].text == block.text:
            groups[-1].append(block)
        else:
            groups.append([block])
    return groups


def _keep_image(corners: Corners, options: MistralOptions, kept_so_far: int) -> bool:
    width, height = corners.size
    if width <= 0 or height <= 0:
        return False
    if options.image_min_size is not None and min(width, height) < options.image_min_size:
        return False
    return options.image_limit is None or kept_so_far < options.image_limit


def _edit(markdown: str, cursor: int, old: str, new: str, edits: list[tuple[int, int, str]]) -> int:
    """Plan replacing the first `old` at or after `cursor`; the new cursor (unchanged if not found)."""
    start = markdown.find(old, cursor)
    if start == -1:
        return cursor
    edits.append((start, start + len(old), new))
    return start + len(old)


def _apply(markdown: str, edits: list[tuple[int, int, str]]) -> str:
    parts: list[str] = []
    position = 0
    for start, end, new in edits:  # planned in order, never overlapping
        parts += [markdown[position:start], new]
        position = end
    parts.append(markdown[position:])
    return _BLANK_LINES.sub("\n\n", "".join(parts)).strip()
