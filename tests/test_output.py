"""Engine text -> clean Markdown and pixel blocks, as a user reads them in a task's `pages`."""

from __future__ import annotations

import pytest

from ocr_service.output.blocks import Block
from ocr_service.output.grounding import (
    clean_text,
    grid_to_pixels,
    parse_boxes,
    parse_grounded,
)
from ocr_service.output.pages import PAGE_SEPARATOR, PageResult, build_page, join_pages

# Shaped like real DeepSeek-OCR output for the grounding prompt (a newline after each
# <|/det|>, trailing spaces, headings already written by the model, tables as HTML).
GROUNDED = (
    "<|ref|>title<|/ref|><|det|>[[115, 165, 465, 201]]<|/det|>\n# Annual Report \n\n"
    "<|ref|>text<|/ref|><|det|>[[115, 232, 880, 261]]<|/det|>\nRevenue grew by 12%. \n\n"
    "<|ref|>table<|/ref|><|det|>[[115, 540, 880, 579]]<|/det|>\n"
    "<table><tr><td>Year</td><td>Revenue</td></tr><tr><td>2024</td><td>10</td></tr></table>\n\n"
    "<|ref|>image<|/ref|><|det|>[[0, 600, 999, 999]]<|/det|>\n\n"
    "<|ref|>image_caption<|/ref|><|det|>[[300, 900, 700, 950]]<|/det|>\nFigure 1. Sales \n"
    "<｜end▁of▁sentence｜>"
)

TAGS = ("<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "<|grounding|>", "end▁of▁sentence", "[[")


def assert_clean(markdown: str) -> None:
    for tag in TAGS:
        assert tag not in markdown


def test_grounded_page_becomes_clean_markdown_and_pixel_blocks() -> None:
    page = build_page(GROUNDED, "stop", width=999 * 2, height=999 * 3, page_number=2)

    assert page.markdown == (
        "# Annual Report\n\n"
        "Revenue grew by 12%.\n\n"
        "<table><tr><td>Year</td><td>Revenue</td></tr><tr><td>2024</td><td>10</td></tr></table>\n\n"
        "![](images/page-2-1.png)\n\n"
        "Figure 1. Sales"
    )
    assert_clean(page.markdown)
    assert [b.label for b in page.blocks] == ["title", "text", "table", "image", "image_caption"]
    # grid 0..999 -> pixels: x * width / 999, y * height / 999
    assert page.blocks[0].bbox == (230.0, 495.0, 930.0, 603.0)
    assert page.blocks[3].bbox == (0.0, 1800.0, 1998.0, 2997.0)
    assert page.blocks[0].text == "# Annual Report"
    assert page.blocks[2].text.startswith("<table>")
    assert page.blocks[3].text == ""
    assert page.finish_reason == "stop" and page.truncated is False


def test_box_numbers_on_an_ordinary_page_size() -> None:
    page = build_page("<|ref|>text<|/ref|><|det|>[[100, 200, 500, 800]]<|/det|>\nHi", "stop", 1240, 1754, 1)
    x1, y1, x2, y2 = page.blocks[0].bbox
    assert x1 == pytest.approx(100 * 1240 / 999, abs=0.01)
    assert y1 == pytest.approx(200 * 1754 / 999, abs=0.01)
    assert x2 == pytest.approx(500 * 1240 / 999, abs=0.01)
    assert y2 == pytest.approx(800 * 1754 / 999, abs=0.01)


def test_as_dict_has_the_wire_shape() -> None:
    page = build_page(GROUNDED, "stop", 999, 999, page_number=1)
    data = page.as_dict()
    assert list(data) == ["page", "markdown", "blocks", "finish_reason", "truncated", "width", "height"]
    assert (data["page"], data["width"], data["height"]) == (1, 999, 999)
    assert data["blocks"][0] == {"label": "title", "bbox": [115.0, 165.0, 465.0, 201.0], "text": "# Annual Report"}
    assert "page" not in PageResult("x", [], "stop", False).as_dict()


def test_title_without_hash_becomes_a_heading_and_existing_heading_is_not_doubled() -> None:
    text = (
        "<|ref|>title<|/ref|><|det|>[[0, 0, 10, 10]]<|/det|>\nPlain Title\n"
        "<|ref|>title<|/ref|><|det|>[[0, 20, 10, 30]]<|/det|>\n# Already\n"
        "<|ref|>sub_title<|/ref|><|det|>[[0, 40, 10, 50]]<|/det|>\n### 1. Section\n"
        "<|ref|>sub_title<|/ref|><|det|>[[0, 60, 10, 70]]<|/det|>\nBare section"
    )
    page = build_page(text, "stop", 100, 100, 1)
    assert page.markdown.split("\n\n") == ["# Plain Title", "# Already", "### 1. Section", "## Bare section"]


def test_several_images_are_numbered_per_page_and_multi_box_refs_give_one_block_per_box() -> None:
    text = (
        "<|ref|>image<|/ref|><|det|>[[0, 0, 499, 499], [500, 500, 999, 999]]<|/det|>\n"
        "<|ref|>text<|/ref|><|det|>[[0, 0, 999, 100], [0, 900, 999, 999]]<|/det|>\nSplit paragraph\n"
        "<|ref|>image<|/ref|><|det|>[[10, 10, 20, 20]]<|/det|>"
    )
    page = build_page(text, "stop", 999, 999, page_number=7)
    assert page.markdown == (
        "![](images/page-7-1.png)\n\n![](images/page-7-2.png)\n\nSplit paragraph\n\n![](images/page-7-3.png)"
    )
    labels = [(b.label, b.bbox) for b in page.blocks]
    assert labels == [
        ("image", (0.0, 0.0, 499.0, 499.0)),
        ("image", (500.0, 500.0, 999.0, 999.0)),
        ("text", (0.0, 0.0, 999.0, 100.0)),
        ("text", (0.0, 900.0, 999.0, 999.0)),
        ("image", (10.0, 10.0, 20.0, 20.0)),
    ]
    assert page.blocks[2].text == page.blocks[3].text == "Split paragraph"
    assert page.markdown.count("Split paragraph") == 1


@pytest.mark.parametrize(
    "box_list",
    [
        "[[1, 2, 3]]",  # three numbers
        "[[1, 2, 3, 4",  # unclosed (inside a closed det)
        "__import__('os').system('echo pwned')",  # code: never evaluated
        "[['a', 'b', 'c', 'd']]",
        "not a list",
        "",
        "[[1e999, 0, 1, 1]]",  # infinity
        "[" * 5000 + "]" * 5000,  # absurd nesting
    ],
)
def test_malformed_box_list_keeps_the_text_and_drops_the_box(box_list: str) -> None:
    text = (
        f"<|ref|>text<|/ref|><|det|>{box_list}<|/det|>\nKept text\n"
        "<|ref|>text<|/ref|><|det|>[[0, 0, 999, 999]]<|/det|>\nNext"
    )
    page = build_page(text, "stop", 999, 999, 1)
    assert page.markdown == "Kept text\n\nNext"
    assert [b.text for b in page.blocks] == ["Next"]
    assert_clean(page.markdown)


def test_bad_boxes_are_dropped_one_by_one_and_a_flat_box_is_accepted() -> None:
    assert parse_boxes("[[1, 2, 3, 4], [5, 6], [True, 1, 2, 3], [7, 8, 9, 10]]") == ((1, 2, 3, 4), (7, 8, 9, 10))
    assert parse_boxes("[1, 2, 3, 4]") == ((1.0, 2.0, 3.0, 4.0),)
    assert parse_boxes("[[1.5, 2, 3, 4]]") == ((1.5, 2.0, 3.0, 4.0),)


def test_boxes_are_clamped_to_the_page_and_ordered() -> None:
    assert grid_to_pixels((-50, 1200, 500, 100), 999, 999) == (0.0, 100.0, 500.0, 999.0)
    assert grid_to_pixels((999, 999, 999, 999), 640, 480) == (640.0, 480.0, 640.0, 480.0)


def test_image_with_a_malformed_box_gets_no_image_reference() -> None:
    text = "<|ref|>image<|/ref|><|det|>[[1, 2]]<|/det|>\n<|ref|>text<|/ref|><|det|>[[0,0,1,1]]<|/det|>\nA"
    page = build_page(text, "stop", 10, 10, 1)
    assert page.markdown == "A"
    assert [b.label for b in page.blocks] == ["text"]


def test_plain_text_passes_through_without_blocks() -> None:
    text = "# Heading\n\nA paragraph with <b>html</b> and a | pipe | table |\n\n$x < y$"
    page = build_page(text, "stop", 100, 100, 3)
    assert page.markdown == text
    assert page.blocks == []


def test_free_ocr_output_loses_its_end_of_sentence_token() -> None:
    page = build_page("Hello world<｜end▁of▁sentence｜>", "stop", 100, 100, 1)
    assert page.markdown == "Hello world"


def test_text_before_the_first_block_is_kept() -> None:
    page = build_page("<|grounding|>Preface\n<|ref|>text<|/ref|><|det|>[[0,0,9,9]]<|/det|>\nBody", "stop", 999, 999, 1)
    assert page.markdown == "Preface\n\nBody"


def test_truncated_page_is_flagged_and_a_cut_off_tag_is_removed() -> None:
    looping = "<|ref|>text<|/ref|><|det|>[[0, 0, 999, 99]]<|/det|>\n" + "la " * 50
    for tail in ("<|ref|>text<|/ref|><|det|>[[12, 34", "<|ref|>tex", "<|/d", "<|ref|>text<|/ref|>"):
        page = build_page(looping + tail, "length", 999, 999, 1)
        assert page.truncated is True
        assert page.finish_reason == "length"
        assert page.markdown == ("la " * 50).strip()
        assert_clean(page.markdown)
        assert "<|" not in page.markdown
        assert len(page.blocks) == 1


def test_a_lone_angle_bracket_at_the_end_is_text_not_a_tag() -> None:
    assert clean_text("a < b and c <") == "a < b and c <"
    assert clean_text("x <|") == "x"


def test_spans_carry_labels_boxes_and_text() -> None:
    leading, spans = parse_grounded(GROUNDED)
    assert leading == ""
    assert spans[0].label == "title" and spans[0].boxes == ((115.0, 165.0, 465.0, 201.0),)
    assert spans[-1].text == "Figure 1. Sales"


def test_ocr_this_image_output_puts_the_text_inside_the_refs() -> None:
    # `<|grounding|>OCR this image.`: each ref is a line of text, nothing follows its box.
    text = (
        "<|ref|>INVOICE No. 42<|/ref|><|det|>[[100, 50, 500, 80]]<|/det|>\n"
        "<|ref|>Total: 12.50 EUR<|/ref|><|det|>[[100, 900, 400, 930]]<|/det|>\n"
        "<|ref|>text<|/ref|><|det|>[[100, 950, 200, 970]]<|/det|>"  # a word that is also a label
    )
    page = build_page(text, "stop", 999, 999, 1)
    assert page.markdown == "INVOICE No. 42\nTotal: 12.50 EUR\ntext"
    assert [(b.label, b.text) for b in page.blocks] == [
        ("text", "INVOICE No. 42"),
        ("text", "Total: 12.50 EUR"),
        ("text", "text"),
    ]
    assert page.blocks[1].bbox == (100.0, 900.0, 400.0, 930.0)


def test_locate_output_gives_one_block_per_occurrence() -> None:
    page = build_page("<|ref|>Total<|/ref|><|det|>[[10, 10, 50, 20], [10, 500, 50, 510]]<|/det|>", "stop", 999, 999, 1)
    assert page.markdown == "Total"
    assert [b.bbox for b in page.blocks] == [(10.0, 10.0, 50.0, 20.0), (10.0, 500.0, 50.0, 510.0)]


def test_page_of_only_images_is_still_layout_output() -> None:
    page = build_page("<|ref|>image<|/ref|><|det|>[[0, 0, 999, 999]]<|/det|>", "stop", 999, 999, 4)
    assert page.markdown == "![](images/page-4-1.png)"
    assert page.blocks[0].label == "image"


def test_line_blocks_give_markdown_in_reading_order() -> None:
    # Shuffled, like an engine might hand them over; two lines, then a paragraph gap.
    blocks = [
        Block("text", (300, 12, 500, 40), "world"),
        Block("text", (10, 100, 200, 128), "Second"),
        Block("text", (10, 10, 250, 38), "Hello"),
        Block("text", (10, 45, 400, 73), "next line"),
    ]
    page = build_page("ignored raw text", "stop", 600, 200, 1, blocks=blocks)
    assert page.markdown == "Hello world\nnext line\n\nSecond"
    assert [b.text for b in page.blocks] == ["Hello", "world", "next line", "Second"]
    assert page.blocks[0].bbox == (10, 10, 250, 38)  # kept as given, in pixels


def test_engine_that_found_no_lines_gives_empty_markdown() -> None:
    page = build_page("", "stop", 100, 100, 1, blocks=[])
    assert page.markdown == "" and page.blocks == []


def test_pages_join_with_the_upstream_separator() -> None:
    assert PAGE_SEPARATOR == "\n<--- Page Split --->\n"
    assert join_pages(["one", "two", "three"]) == "one\n<--- Page Split --->\ntwo\n<--- Page Split --->\nthree"
    assert join_pages(["only"]) == "only"
    assert join_pages([]) == ""
