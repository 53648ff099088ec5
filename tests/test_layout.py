"""Reading order and Markdown of line boxes: synthetic page layouts, then real pages through RapidOCR."""

from __future__ import annotations

import html
import io
import math
import random
import re
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt
from PIL import Image, ImageDraw, ImageFont

from ocr_service.engines.base import PageOutput, PageRequest
from ocr_service.output.blocks import Block
from ocr_service.output.escape import escape_markdown
from ocr_service.output.layout import lay_out
from ocr_service.output.pages import build_page
from tests.helpers import poll_task, service_process

LINE = 24  # box height of a body line, px
PITCH = 30  # baseline to baseline, px


def column(x: float, top: float, texts: list[str], width: float = 400, pitch: float = PITCH) -> list[Block]:
    """One column of line boxes; a line's box is as wide as its text is long, up to `width`."""
    longest = max(len(text) for text in texts)
    return [
        Block("text", (x, top + n * pitch, x + width * len(text) / longest, top + n * pitch + LINE), text)
        for n, text in enumerate(texts)
    ]


def box(x1: float, y1: float, x2: float, y2: float, text: str) -> Block:
    return Block("text", (x1, y1, x2, y2), text)


def order(blocks: list[Block]) -> list[str]:
    return [block.text for block in lay_out(blocks).blocks]


def shuffled(blocks: list[Block]) -> list[Block]:
    """The blocks in a fixed scrambled order, as an engine might hand them over."""
    out = list(blocks)
    random.Random(len(out)).shuffle(out)
    return out


def rotated(blocks: list[Block], degrees: float, centre: tuple[float, float] = (600, 800)) -> list[Block]:
    """What a scan turned by `degrees` gives: each line's rectangle turned, then its upright bounding box."""
    angle = math.radians(degrees)
    out = []
    for block in blocks:
        x1, y1, x2, y2 = block.bbox
        corners = [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
        turned = [
            (
                centre[0] + (x - centre[0]) * math.cos(angle) - (y - centre[1]) * math.sin(angle),
                centre[1] + (x - centre[0]) * math.sin(angle) + (y - centre[1]) * math.cos(angle),
            )
            for x, y in corners
        ]
        xs, ys = [p[0] for p in turned], [p[1] for p in turned]
        out.append(Block(block.label, (min(xs), min(ys), max(xs), max(ys)), block.text))
    return out


LEFT = [f"left {n} lorem ipsum dolor sit amet" for n in range(1, 9)]
RIGHT = [f"right {n} consectetur adipiscing elit" for n in range(1, 9)]


def test_two_columns_offset_by_half_a_line_are_read_column_by_column() -> None:
    # The layout a growing line tolerance chained into one line per row pair.
    page = column(100, 100, LEFT) + column(560, 100 + PITCH / 2, RIGHT)
    assert order(shuffled(page)) == LEFT + RIGHT
    assert lay_out(page).markdown == "\n".join(LEFT) + "\n\n" + "\n".join(RIGHT)


def test_two_columns_on_one_baseline_grid_are_read_column_by_column() -> None:
    # An index: short entries, both columns on the same baselines, a ragged right edge.
    left = ["apt, 12, 40", "apt-get, 3", "aptitude, 7, 19, 22", "dpkg, 5", "dselect, 88", "editor, 14"]
    right = ["kernel, 9", "locale, 31, 32", "mount, 70", "nano, 14", "sudo, 2, 60", "systemd, 45, 46, 47"]
    page = column(100, 100, left, width=300) + column(450, 100, right, width=300)  # a 50 px gutter
    assert order(shuffled(page)) == left + right


def test_three_columns_are_read_left_to_right() -> None:
    texts = [[f"col{c} line {n} some words" for n in range(1, 7)] for c in range(3)]
    page = column(80, 200, texts[0], 300) + column(420, 210, texts[1], 300) + column(760, 195, texts[2], 300)
    title = box(80, 100, 1060, 150, "A Title Over Three Columns")
    assert order(shuffled([*page, title])) == ["A Title Over Three Columns", *texts[0], *texts[1], *texts[2]]


def test_title_above_two_columns_and_a_full_width_paragraph_below() -> None:
    title = box(100, 40, 860, 90, "Chapter Title")
    left, right = column(100, 130, LEFT[:5]), column(560, 130 + 12, RIGHT[:5])
    footer = column(100, 320, ["a closing paragraph that runs across the whole page width", "and ends here"], 760)
    page = [title, *left, *right, *footer]
    expected = ["Chapter Title", *LEFT[:5], *RIGHT[:5], *[b.text for b in footer]]
    assert order(shuffled(page)) == expected
    markdown = lay_out(page).markdown
    assert markdown.startswith("# Chapter Title\n\n")
    assert markdown.endswith("\n\na closing paragraph that runs across the whole page width\nand ends here")


def test_a_sidebar_is_read_after_the_main_column() -> None:
    main = column(100, 100, [f"main text line {n} with many words in it" for n in range(1, 11)], 600)
    notes = ["Note:", "sidebar one", "sidebar two", "sidebar three", "sidebar four", "sidebar five"]
    side = column(750, 160, notes, 200)
    assert order(shuffled(main + side)) == [b.text for b in main + side]
    # On the main column's baselines too (six lines or more: fewer could be a table's).
    side = column(750, 100 + 2 * PITCH, notes, 200)
    assert order(shuffled(main + side)) == [b.text for b in main + side]


TOC = [
    ("Contents", None, 0),
    ("1 Introduction", "1", 0),
    ("1.1 Scope", "2", 30),
    ("1.2 Terms", "4", 30),
    ("2 Installing the system", "12", 0),
    ("2.1 Partitions", "15", 30),
    ("Appendix A Licence", "xii", 0),
]


def toc_page() -> list[Block]:
    blocks = []
    for n, (title, number, indent) in enumerate(TOC):
        top = 100 + n * PITCH
        if number is None:
            blocks.append(box(100, top - 20, 400, top + LINE + 20, title))  # a heading, 64 px tall
            continue
        blocks.append(box(100 + indent, top, 100 + indent + 18 * len(title), top + LINE, title))
        blocks.append(box(1030 - 16 * len(number), top + 1, 1030, top + LINE - 1, number))  # right-aligned
    return blocks


def test_table_of_contents_keeps_each_title_with_its_right_aligned_page_number() -> None:
    markdown = lay_out(shuffled(toc_page())).markdown
    assert markdown == (
        "# Contents\n\n"
        "1 Introduction 1\n1.1 Scope 2\n1.2 Terms 4\n2 Installing the system 12\n2.1 Partitions 15\n"
        "Appendix A Licence xii"
    )


@pytest.mark.parametrize("degrees", [1.5, -2.0, 0.7])
def test_a_slightly_rotated_scan_reads_as_the_upright_one(degrees: float) -> None:
    columns = column(100, 400, LEFT) + column(560, 400, RIGHT)  # one baseline grid: the hard case
    page = toc_page() + columns
    upright = lay_out(page)
    turned = lay_out(shuffled(rotated(page, degrees)))
    assert [b.text for b in turned.blocks] == [b.text for b in upright.blocks]
    assert turned.markdown == upright.markdown
    assert "\n".join(LEFT) + "\n\n" + "\n".join(RIGHT) in turned.markdown
    # Offset columns, turned the other way round the page's corner.
    page = column(100, 100, LEFT) + column(560, 100 + PITCH / 2, RIGHT)
    assert order(rotated(page, degrees, centre=(0, 0))) == LEFT + RIGHT


@pytest.mark.parametrize(("right_offset", "number_offset"), [(0, 0), (-10.1, -1)])
def test_an_index_whose_entries_end_in_page_numbers_is_read_column_by_column(
    right_offset: float, number_offset: float
) -> None:
    # Two columns of "entry . . . page"; the engine splits the number off. On one baseline
    # grid, then with the right column 10 px higher: its boxes come first down the page and
    # would start rows that split an entry (1 px lower than its number) from its number.
    left = [("closing files . .", "74"), ("colour names . . .", "16"), ("column data", "95, 135"), ("commands", "8"),
            ("comments", "19"), ("compiling", "220")]
    right = [("contours . . .", "23"), ("contributors", "241"), ("conversion . .", "160"), ("copyright", "ii"),
             ("cost", "76"), ("curves", "45, 46")]  # fmt: skip
    blocks = []
    for n, ((text_l, page_l), (text_r, page_r)) in enumerate(zip(left, right, strict=True)):
        top, number, high = 100 + n * PITCH, 100 + n * PITCH + number_offset, 100 + n * PITCH + right_offset
        blocks += [box(100, top, 100 + 14 * len(text_l), top + LINE, text_l), box(500, number, 560, number + LINE, page_l)]
        blocks += [box(620, high, 620 + 14 * len(text_r), high + LINE, text_r), box(1020, high, 1080, high + LINE, page_r)]
    markdown = lay_out(shuffled(blocks)).markdown
    assert markdown.split("\n\n") == ["\n".join(f"{text} {page}" for text, page in side) for side in (left, right)]


def test_a_wide_table_is_read_row_by_row_not_cut_into_columns() -> None:
    # Five columns, the widest gap in the middle: both halves are wide, but their rows are cells.
    rows = [
        ("package", "popcon", "size", "keyword", "description"),
        ("docbook-to-man", "V:0, I:10", "191", "SGML", "converter from DocBook SGML into roff man macros"),
        ("help2man", "V:0, I:8", "542", "text", "automatic manpage generator from --help"),
        ("info2man", "V:0, I:0", "134", "info", "converter from GNU info to POD or man pages"),
    ]
    blocks = [
        box(x, 100 + n * PITCH, x + 12 * len(text), 124 + n * PITCH, text)
        for n, row in enumerate(rows)
        for x, text in zip((100, 330, 500, 580, 700), row, strict=True)
    ]
    assert lay_out(shuffled(blocks)).markdown.split("\n")[2:] == [
        "| docbook-to-man | V:0, I:10 | 191 | SGML | converter from DocBook SGML into roff man macros |",
        "| help2man | V:0, I:8 | 542 | text | automatic manpage generator from --help |",
        "| info2man | V:0, I:0 | 134 | info | converter from GNU info to POD or man pages |",
    ]


def test_index_columns_on_one_grid_with_continuation_lines_of_page_numbers() -> None:
    # A continuation line of only numbers in the right column sits on a left entry's baseline.
    left = ["clip, 24, 81, 137", "colorspec, 28, 50, 68, 75, 79, 126,", "    202, 203, 210", "column, 40, 116",
            "cos, 38", "cosh, 38"]
    right = ["enhanced, 34, 237, 272, 273, 276,", "    297", "environment, 35, 96", "epoch, 39", "eps, 47",
             "epscairo, 253"]  # fmt: skip
    blocks = [
        box(x + 14 * (len(text) - len(text.lstrip())), 100 + n * PITCH, x + 14 * len(text), 124 + n * PITCH, text.strip())
        for x, side in ((100, left), (620, right))
        for n, text in enumerate(side)
    ]
    assert order(shuffled(blocks)) == [text.strip() for text in left + right]


def test_code_with_aligned_comments_is_read_row_by_row() -> None:
    # From gnuplot's manual: four commands, each with its comment one gutter to the right.
    code = [("every :::3::3", "# selects just the fourth block"), ("every :::::9", "# selects the first 10 blocks"),
            ("every 2:2", "# selects every other point"), ("every ::5::15", "# selects points 5 through 15")]  # fmt: skip
    blocks = []
    for n, (command, comment) in enumerate(code):
        blocks += [box(100, 100 + n * PITCH, 100 + 14 * len(command), 124 + n * PITCH, command)]
        blocks += [box(310, 100 + n * PITCH, 310 + 12 * len(comment), 124 + n * PITCH, comment)]
    assert order(shuffled(blocks)) == [text for pair in code for text in pair]  # (as a table: aligned cells)


def test_definition_labels_above_their_paragraphs_stay_with_them() -> None:
    # Debian Policy's upgrading checklist: a section number, then its paragraph indented below it.
    blocks = []
    top = 100.0
    for label, lines in (("3.3", 3), ("5", 2), ("5.1", 3)):
        blocks.append(box(100, top, 130, top + LINE, label))
        for n in range(lines):
            top += 0.6 * PITCH if n == 0 else PITCH
            blocks.append(box(150, top, 900, top + LINE, f"text of {label} line {n}"))
        top += 1.4 * PITCH
    assert order(shuffled(blocks)) == [b.text for b in blocks]


def test_indented_lines_of_one_column_stay_in_order() -> None:
    # Code: indented lines take turns with unindented ones, never side by side.
    code = [(0, "if ready:"), (1, "start()"), (0, "else:"), (1, "wait()"), (1, "retry()"), (0, "done()")]
    blocks = [box(100 + 60 * depth, 100 + n * PITCH, 100 + 60 * depth + 14 * len(text), 100 + n * PITCH + LINE, text)
              for n, (depth, text) in enumerate(code)]  # fmt: skip
    assert order(shuffled(blocks)) == [text for _, text in code]


def test_a_narrow_term_column_is_read_across_with_its_descriptions() -> None:
    # A definition list: each term on the first line of its description.
    blocks = [
        box(100, 100, 220, 124, "--force"), box(300, 100, 900, 124, "do it even when a check fails, and"),
        box(300, 130, 700, 154, "say so on the console"),
        box(100, 160, 200, 184, "--quiet"), box(300, 160, 800, 184, "print nothing but errors"),
        box(100, 190, 210, 214, "--help"), box(300, 190, 820, 214, "show the options and exit"),
    ]  # fmt: skip
    assert order(shuffled(blocks)) == [b.text for b in blocks]


def test_headings_only_where_the_line_is_clearly_taller() -> None:
    body = column(
        100, 200, ["an ordinary body line of text", "another one here", "a third", "and more", "and the last"]
    )
    blocks = [
        box(100, 40, 600, 90, "Big Title"),  # 50 px: 2 x the median line
        box(100, 110, 500, 146, "Section Heading"),  # 36 px: 1.5 x
        box(100, 160, 500, 190, "A Bold Line"),  # 30 px: 1.25 x, not a heading
        *body,
    ]
    markdown = lay_out(blocks).markdown
    assert markdown.split("\n\n") == [
        "# Big Title",
        "## Section Heading",
        "A Bold Line\nan ordinary body line of text\nanother one here\na third\nand more\nand the last",
    ]


def test_bullets_and_numbers_become_lists_and_a_lone_marker_stays_text() -> None:
    blocks = [
        box(100, 100, 600, 124, "• first point"),
        box(130, 130, 600, 154, "that goes on"),  # hanging indent: the same item
        box(100, 160, 600, 184, "• second point"),
        box(100, 220, 600, 244, "1. one"),
        box(100, 250, 600, 274, "2. two"),
        box(100, 310, 600, 334, "- a dash is no bullet # nor a heading"),
        box(100, 340, 600, 364, "- (it may be a diff, or an option)"),
        box(100, 370, 600, 394, "3) three"),
        box(100, 400, 600, 424, "5) five"),  # does not count on: not a list
        box(100, 430, 600, 454, "the paragraph goes on"),
    ]
    markdown = lay_out(blocks).markdown
    assert markdown.split("\n\n") == [
        "- first point\n  that goes on\n- second point",
        "1. one\n2. two",
        "\\- a dash is no bullet # nor a heading\n\\- (it may be a diff, or an option)\n3\\) three\n5\\) five\n"
        "the paragraph goes on",
    ]


def test_rows_of_aligned_cells_become_a_table_and_a_toc_does_not() -> None:
    cells = [["Package", "Version", "Size"], ["apt", "2.6.1", "1.4 MB"], ["dpkg", "1.21.22", "2.9 MB"], ["nano|vim", "7.2", "3 MB"]]  # fmt: skip
    blocks = [
        box(x, 100 + n * PITCH, x + 15 * len(text), 124 + n * PITCH, text)
        for n, row in enumerate(cells)
        for x, text in zip((100, 400, 700), row, strict=True)
    ]
    markdown = lay_out(shuffled(blocks)).markdown
    assert markdown == (
        "| Package | Version | Size |\n| --- | --- | --- |\n| apt | 2.6.1 | 1.4 MB |\n"
        "| dpkg | 1.21.22 | 2.9 MB |\n| nano\\|vim | 7.2 | 3 MB |"
    )
    rendered = MarkdownIt("commonmark").enable("table").render(markdown)
    assert re.findall(r"<t[hd]>(.*?)</t[hd]>", rendered) == [cell for row in cells for cell in row]


HOSTILE = [
    "# comment",
    "## open a connection",
    "<json5format::Value> & &amp; entities",
    "asn1_array2tree and *stars* and __dunder__",
    "> not a quote",
    "- not a bullet",
    "+ nor this",
    "1. nor a numbered item",
    "2) nor this",
    "| a | b |",
    "[link](http://example.com) ![img](x.png)",
    "`code` ``more``",
    "a backslash \\ and \\* an escape",
    "===",
    "---",
    "~~~ fence",
    "<!-- comment -->",
    "http://autolink.example <b>bold</b>",
    "C# and F# #",
]


def test_hostile_text_renders_literally_through_a_commonmark_renderer() -> None:
    # One paragraph, a page line per source line: no line may start a block or end the paragraph.
    blocks = [box(100, 100 + n * PITCH, 900, 124 + n * PITCH, text) for n, text in enumerate(HOSTILE)]
    markdown = lay_out(blocks).markdown
    assert markdown.count("\n") == len(HOSTILE) - 1
    rendered = MarkdownIt("commonmark").enable("table").enable("strikethrough").render(markdown)
    assert rendered == "<p>" + "\n".join(html.escape(text, quote=False) for text in HOSTILE) + "</p>\n"


@pytest.mark.parametrize("text", HOSTILE)
def test_escaped_text_round_trips_through_commonmark(text: str) -> None:
    rendered = MarkdownIt("commonmark").enable("table").enable("strikethrough").render(escape_markdown(text))
    assert rendered == f"<p>{html.escape(text, quote=False)}</p>\n"


# Lines of recognised text: Markdown and HTML metacharacters among any printable characters.
METACHARACTERS = st.sampled_from("#>-+=*_`<>&|[]\\!()~.:10 a\t\"'")
PRINTABLE = st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp"))
TEXT_LINES = st.lists(st.text(METACHARACTERS | PRINTABLE).filter(lambda line: bool(line.split())), min_size=1, max_size=4)


@settings(max_examples=400, derandomize=True, deadline=None)
@given(TEXT_LINES)
def test_any_lines_of_text_render_back_literally(lines: list[str]) -> None:
    rendered = MarkdownIt("commonmark").enable("table").enable("strikethrough").render(
        "\n".join(escape_markdown(line) for line in lines)
    )
    expected = "\n".join(html.escape(" ".join(line.split()), quote=False).replace('"', "&quot;") for line in lines)
    assert rendered == f"<p>{expected}</p>\n"


def test_grounded_deepseek_markdown_is_not_escaped() -> None:
    text = "<|ref|>title<|/ref|><|det|>[[0, 0, 999, 99]]<|/det|>\n# Report\n<|ref|>text<|/ref|><|det|>[[0, 100, 999, 199]]<|/det|>\n**bold** and `code`"  # fmt: skip
    assert build_page(text, "stop", 999, 999, 1).markdown == "# Report\n\n**bold** and `code`"


def test_a_page_crowded_with_boxes_is_still_read_top_to_bottom() -> None:
    # Past the bound on column analysis, rows are read in order and every box is kept.
    blocks = [box(10 + 30 * (n % 60), 10 + 12 * (n // 60), 30 + 30 * (n % 60), 20 + 12 * (n // 60), f"w{n}") for n in range(4000)]  # fmt: skip
    page = lay_out(shuffled(blocks))
    assert [b.text for b in page.blocks] == [f"w{n}" for n in range(4000)]


def test_degenerate_input() -> None:
    assert lay_out([]).markdown == ""
    assert lay_out([box(10, 10, 10, 10, "dot")]).markdown == "dot"  # a zero-size box
    assert lay_out([box(10, 10, 50, 30, "   ")]).blocks == []  # no text: dropped
    same = [box(10, 10, 50, 30, "a"), box(10, 10, 50, 30, "b")]
    assert sorted(order(same)) == ["a", "b"]


# -- real pages through the default engine ------------------------------------------------

FONTS = Path("/usr/share/fonts/truetype/dejavu")
COLUMN_ONE = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november".split()  # noqa: SIM905
COLUMN_TWO = "oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu".split()  # noqa: SIM905


def font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    path = FONTS / ("DejaVuSerif-Bold.ttf" if bold else "DejaVuSerif.ttf")
    return ImageFont.truetype(str(path), size) if path.exists() else ImageFont.load_default(size=size)


def two_column_page(code: tuple[str, ...] = ()) -> tuple[Image.Image, list[str], list[str]]:
    """A letter page at 144 dpi: a title, then two columns whose lines are offset by half a line.

    `code` lines go below the columns, across the page.
    """
    image = Image.new("RGB", (1224, 1584), "white")
    draw = ImageDraw.Draw(image)
    draw.text((110, 90), "Reading Order Test", fill="black", font=font(44, bold=True))
    body = font(22)
    one, two = [], []
    for n in range(24):
        words_one = [COLUMN_ONE[(n * 3 + k) % len(COLUMN_ONE)] for k in range(4)]
        words_two = [COLUMN_TWO[(n * 3 + k) % len(COLUMN_TWO)] for k in range(4)]
        draw.text((110, 200 + n * 34), " ".join(words_one), fill="black", font=body)
        draw.text((640, 217 + n * 34), " ".join(words_two), fill="black", font=body)
        one += words_one
        two += words_two
    for n, line in enumerate(code):
        draw.text((110, 1100 + n * 40), line, fill="black", font=font(24))
    return image, one, two


@pytest.fixture(scope="module")
def rapidocr():  # type: ignore[no-untyped-def]
    from ocr_service.engines.rapidocr import RapidOcrEngine

    engine = RapidOcrEngine(threads=1)
    engine.load()
    yield engine
    engine.close()


async def read(engine, image: Image.Image) -> str:  # type: ignore[no-untyped-def]
    """The page's Markdown as a user gets it: the engine's output through `build_page`."""
    async for _, outcome in engine.run([PageRequest.of_image(image, "<image>\nFree OCR.")]):
        assert isinstance(outcome, PageOutput)
        return build_page(
            outcome.text, outcome.finish_reason, outcome.width, outcome.height, 1, outcome.blocks
        ).markdown
    raise AssertionError("the engine returned nothing")


@pytest.mark.parametrize("degrees", [0.0, 1.5])
async def test_rapidocr_two_column_page_reads_column_one_then_column_two(rapidocr, degrees: float) -> None:  # type: ignore[no-untyped-def]
    image, one, two = two_column_page()
    if degrees:
        image = image.rotate(degrees, resample=Image.Resampling.BICUBIC, fillcolor="white")
    markdown = await read(rapidocr, image)
    words = re.findall(r"[a-z]+", markdown.lower())
    assert re.match(r"#{1,2} Reading Order Test\n\n", markdown)  # the title is a heading
    # Every word was read, in order: all of column one, then all of column two.
    assert words[words.index("alpha") :] == one + two


def test_a_two_column_pdf_over_http_reads_in_order_and_keeps_code_literal(tmp_path: Path) -> None:
    # A user's path: a PDF upload to a real `run_service.py` on the default engine.
    code = ("# comment", "<json5format::Value> asn1_array2tree")
    image, one, two = two_column_page(code)
    pdf = io.BytesIO()
    image.save(pdf, format="PDF", resolution=144)
    with service_process(tmp_path, {"OCR_BATCH_TIMEOUT": "0.1"}) as service:
        response = httpx.post(f"{service.url}/ocr", files={"file": ("manual.pdf", pdf.getvalue(), "application/pdf")})
        assert response.status_code == 202
        task = poll_task(service.url, response.json()["task_id"], timeout=300)
    assert task["status"] == "completed", task
    markdown = task["pages"][0]["markdown"]
    words = re.findall(r"[a-z]+", markdown.lower())
    assert words[words.index("alpha") : words.index("alpha") + len(one) + len(two)] == one + two
    # The code lines come back as text: no heading, no HTML tag, no emphasis.
    rendered = MarkdownIt("commonmark").render(markdown)
    assert "<p># comment\n&lt;json5format::Value&gt; asn1_array2tree</p>" in rendered
