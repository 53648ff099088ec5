"""Uploads in, pages out: every supported format, and every bad document refused clearly.

All files are made here: images with Pillow, PDFs written by hand (`make_pdf`) so each
page has a known size and colour.
"""

from __future__ import annotations

import io
import math
import threading

import numpy as np
import pytest
from PIL import Image

from ocr_service.documents import (
    DecoderPool,
    DocumentError,
    DocumentLimits,
    open_document,
    sniff_media_type,
)
from ocr_service.documents.pdf import render_scale
from tests.files import make_pdf, png_header_only

LIMITS = DocumentLimits(max_pixels=20_000_000, max_pdf_pages=50, pdf_dpi=144)
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


# ---------------------------------------------------------------- file makers


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> Image.Image:
    return Image.new("RGB", size, colour)


def close_to(pixel: tuple[int, ...], colour: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=False))


# ---------------------------------------------------------------- images


@pytest.mark.parametrize(
    ("fmt", "media_type"),
    [
        ("PNG", "image/png"),
        ("JPEG", "image/jpeg"),
        ("WEBP", "image/webp"),
        ("TIFF", "image/tiff"),
        ("BMP", "image/bmp"),
        ("GIF", "image/gif"),
    ],
)
def test_each_image_format_opens_as_one_rgb_page(fmt: str, media_type: str, pool: DecoderPool) -> None:
    data = encode(solid(RED, (64, 48)), fmt)
    document = open_document(data, LIMITS, pool)

    assert (document.kind, document.media_type, document.page_count) == ("image", media_type, 1)
    assert document.nbytes == len(data)
    page = document.load_page(0)
    assert page.mode == "RGB" and page.size == (64, 48)
    assert close_to(page.getpixel((32, 24)), RED)


def test_exif_orientation_6_rotates_a_scan_upright(pool: DecoderPool) -> None:
    # Stored sideways (wide), as a phone held upright writes it, with a marker top-left.
    stored = solid(WHITE, (120, 60))
    stored.paste(RED, (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    data = encode(stored, "JPEG", exif=exif.tobytes(), quality=95)

    page = open_document(data, LIMITS, pool).load_page(0)

    assert page.size == (60, 120)  # width and height swapped
    assert close_to(page.getpixel((50, 10)), RED)  # top-left corner went to the top right
    assert close_to(page.getpixel((10, 10)), WHITE)
    assert close_to(page.getpixel((10, 110)), WHITE)


def test_multi_frame_tiff_gives_one_page_per_frame_in_order(pool: DecoderPool) -> None:
    frames = [solid(RED, (30, 20)), solid(GREEN, (40, 25)), solid(BLUE, (50, 30))]
    data = encode(frames[0], "TIFF", save_all=True, append_images=frames[1:])

    document = open_document(data, LIMITS, pool)

    assert document.page_count == 3
    pages = [document.load_page(i) for i in range(3)]
    assert [p.size for p in pages] == [(30, 20), (40, 25), (50, 30)]
    assert [p.getpixel((5, 5)) for p in pages] == [RED, GREEN, BLUE]
    with pytest.raises(IndexError):
        document.load_page(3)


def test_tiff_with_more_frames_than_the_page_cap_is_refused(pool: DecoderPool) -> None:
    frames = [solid(c, (10, 10)) for c in (RED, GREEN, BLUE)]
    data = encode(frames[0], "TIFF", save_all=True, append_images=frames[1:])
    with pytest.raises(DocumentError, match="more than 2 pages; the limit is 2"):
        open_document(data, DocumentLimits(max_pixels=10_000, max_pdf_pages=2, pdf_dpi=144), pool)


def test_tiff_with_one_oversized_frame_is_refused_naming_the_page(pool: DecoderPool) -> None:
    frames = [solid(RED, (10, 10)), solid(GREEN, (200, 100))]
    data = encode(frames[0], "TIFF", save_all=True, append_images=frames[1:])
    with pytest.raises(DocumentError, match=r"Page 2 .* 200x100 = 20,000 pixels; the limit is 10,000"):
        open_document(data, DocumentLimits(max_pixels=10_000, max_pdf_pages=5, pdf_dpi=144), pool)


def test_animated_gif_uses_the_first_frame_only(pool: DecoderPool) -> None:
    frames = [solid(RED, (20, 20)), solid(BLUE, (20, 20))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    document = open_document(data, LIMITS, pool)
    assert document.page_count == 1
    assert document.load_page(0).getpixel((10, 10)) == RED


def test_format_comes_from_the_bytes_not_the_name(pool: DecoderPool) -> None:
    jpeg_named_png = encode(solid(GREEN), "JPEG")  # say, uploaded as "scan.png" with image/png
    document = open_document(jpeg_named_png, LIMITS, pool)
    assert document.media_type == "image/jpeg"
    assert close_to(document.load_page(0).getpixel((5, 5)), GREEN)


def test_transparent_png_is_put_on_white_not_black(pool: DecoderPool) -> None:
    image = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    image.paste((0, 0, 0, 255), (0, 0, 5, 5))  # black "ink" top-left
    page = open_document(encode(image, "PNG"), LIMITS, pool).load_page(0)
    assert page.getpixel((15, 15)) == WHITE
    assert page.getpixel((2, 2)) == (0, 0, 0)


def test_sixteen_bit_greyscale_keeps_its_contrast(pool: DecoderPool) -> None:
    values = np.zeros((10, 20), dtype=np.uint16)
    values[:, 10:] = 4000  # a 12-bit scanner's white; Pillow alone would clip both halves to white
    page = open_document(encode(Image.fromarray(values), "PNG"), LIMITS, pool).load_page(0)
    assert page.getpixel((2, 2)) == (0, 0, 0)
    assert page.getpixel((15, 2)) == WHITE


def test_large_jpeg_is_checked_without_a_full_decode_and_renders_whole(pool: DecoderPool) -> None:
    image = Image.fromarray((np.random.default_rng(1).random((1500, 1000, 3)) * 255).astype(np.uint8))
    data = encode(image, "JPEG", quality=80)
    document = open_document(data, LIMITS, pool)
    assert document.load_page(0).size == (1000, 1500)
    with pytest.raises(DocumentError, match="truncated or corrupt"):
        open_document(data[: len(data) * 3 // 4], LIMITS, pool)


# ---------------------------------------------------------------- bad images


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"Just some notes, not a scan.\n", "plain text"),
        (b"<!DOCTYPE html><html><body>Login</body></html>", "HTML page"),
        (b"PK\x03\x04" + b"\x00" * 40, "ZIP archive"),
        (b"\x1f\x8b\x08\x00" + b"\x00" * 20, "gzip"),
        (b"\x00\x00\x00\x18ftypheic" + b"\x00" * 20, "HEIC"),
        (bytes(range(256)) * 4, "Unsupported file type"),
    ],
)
def test_non_documents_are_refused_saying_what_was_received(data: bytes, message: str, pool: DecoderPool) -> None:
    with pytest.raises(DocumentError, match=message) as caught:
        open_document(data, LIMITS, pool)
    if data:
        assert "send a PDF or a PNG, JPEG, WebP, TIFF, BMP or GIF image" in str(caught.value)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_truncated_images_are_refused_at_open(fmt: str, pool: DecoderPool) -> None:
    image = Image.fromarray((np.random.default_rng(2).random((120, 160, 3)) * 255).astype(np.uint8))
    data = encode(image, fmt)
    with pytest.raises(DocumentError, match="truncated or corrupt"):
        open_document(data[: len(data) // 2], LIMITS, pool)


def test_image_with_a_valid_signature_and_garbage_after_is_refused(pool: DecoderPool) -> None:
    with pytest.raises(DocumentError, match="PNG image .*corrupt"):
        open_document(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10, LIMITS, pool)
    with pytest.raises(DocumentError, match="BMP image"):
        open_document(b"BMW is not a bitmap", LIMITS, pool)


def test_pixel_bomb_is_refused_from_the_header_before_any_decoding(pool: DecoderPool) -> None:
    # 10000 x 5000 = 50 MP: under Pillow's own warning level, over our limit. The file
    # has no pixel data, so a decode attempt would fail differently: the size message
    # proves the check ran first.
    with pytest.raises(DocumentError, match=r"10000x5000 = 50,000,000 pixels; the limit is 20,000,000"):
        open_document(png_header_only(10_000, 5_000), LIMITS, pool)


def test_giant_pixel_bomb_is_refused_too(pool: DecoderPool) -> None:
    # 10 gigapixels: Pillow's own bomb check fires first; the message still names our limit.
    with pytest.raises(DocumentError, match="too many pixels; the limit is 20,000,000 pixels"):
        open_document(png_header_only(100_000, 100_000), LIMITS, pool)


def test_big_png_over_the_full_check_size_is_verified_cheaply(pool: DecoderPool) -> None:
    data = encode(Image.new("L", (4000, 3100), 255), "PNG")  # 12.4 MP: checked with verify()
    assert open_document(data, LIMITS, pool).load_page(0).size == (4000, 3100)
    with pytest.raises(DocumentError, match="truncated or corrupt"):
        open_document(data[:-40], LIMITS, pool)


def test_big_image_without_a_cheap_check_that_is_truncated_fails_at_render(pool: DecoderPool) -> None:
    data = encode(Image.new("L", (4000, 3100), 255), "BMP")  # 12.4 MP: not decoded at open
    document = open_document(data[: len(data) // 2], LIMITS, pool)
    with pytest.raises(DocumentError, match="BMP image is truncated or corrupt"):
        document.load_page(0)


# ---------------------------------------------------------------- PDFs


def test_multi_page_pdf_counts_pages_and_renders_each_in_order(pool: DecoderPool) -> None:
    data = make_pdf([(100, 50, RED), (60, 80, GREEN), (72, 72, BLUE)])
    document = open_document(data, LIMITS, pool)

    assert (document.kind, document.media_type, document.page_count) == ("pdf", "application/pdf", 3)
    pages = [document.load_page(i) for i in range(3)]
    # 144 dpi = 2 pixels per point
    assert [p.size for p in pages] == [(200, 100), (120, 160), (144, 144)]
    assert [p.mode for p in pages] == ["RGB"] * 3
    assert [p.getpixel((10, 10)) for p in pages] == [RED, GREEN, BLUE]
    with pytest.raises(IndexError):
        document.load_page(3)


def test_pdf_dpi_setting_sets_the_raster_size(pool: DecoderPool) -> None:
    document = open_document(make_pdf([(72, 36, RED)]), DocumentLimits(20_000_000, 10, pdf_dpi=72), pool)
    assert document.load_page(0).size == (72, 36)


def test_rotated_pdf_page_renders_as_displayed(pool: DecoderPool) -> None:
    document = open_document(make_pdf([(100, 50, RED)], rotate=90), LIMITS, pool)
    assert document.load_page(0).size == (100, 200)


def test_pdf_over_the_page_cap_is_refused_naming_the_limit(pool: DecoderPool) -> None:
    data = make_pdf([(10, 10, RED)] * 4)
    with pytest.raises(DocumentError, match="The PDF has 4 pages; the limit is 3 pages"):
        open_document(data, DocumentLimits(max_pixels=1_000_000, max_pdf_pages=3, pdf_dpi=144), pool)


def test_encrypted_pdf_is_refused(pool: DecoderPool) -> None:
    with pytest.raises(DocumentError, match="encrypted"):
        open_document(make_pdf([(100, 100, RED)], encrypt=True), LIMITS, pool)


def test_pdf_with_no_pages_is_refused(pool: DecoderPool) -> None:
    with pytest.raises(DocumentError, match="no pages"):
        open_document(make_pdf([]), LIMITS, pool)


def test_zero_page_pdf_after_an_encrypted_one_is_not_called_encrypted(pool: DecoderPool) -> None:
    # pdfium's last-error code is sticky: the zero-page failure would read "password".
    with pytest.raises(DocumentError, match="encrypted"):
        open_document(make_pdf([(100, 100, RED)], encrypt=True), LIMITS, pool)
    with pytest.raises(DocumentError, match="no pages"):
        open_document(make_pdf([]), LIMITS, pool)


@pytest.mark.parametrize(
    "data",
    [
        b"%PDF-1.7\n" + b"\x00garbage" * 50,
        b"%PDF-",
        make_pdf([(100, 100, RED)])[:60],  # truncated before any object ends
        make_pdf([(100, 100, RED)] * 3)[:400],  # truncated mid-file: no xref, no trailer
    ],
)
def test_corrupt_pdfs_are_refused(data: bytes, pool: DecoderPool) -> None:
    with pytest.raises(DocumentError, match="PDF"):
        open_document(data, LIMITS, pool)


def test_damaged_page_fails_alone_at_render(pool: DecoderPool) -> None:
    data = make_pdf([(100, 50, RED), (100, 50, GREEN)], kids="3 0 R 99 0 R")  # page 2 is missing
    document = open_document(data, LIMITS, pool)
    assert document.page_count == 2
    assert document.load_page(0).getpixel((5, 5)) == RED
    with pytest.raises(DocumentError, match="Page 2 of the PDF"):
        document.load_page(1)


def test_pdf_header_after_leading_junk_is_still_a_pdf(pool: DecoderPool) -> None:
    data = b"\r\n\x00junk from a mail gateway\n" + make_pdf([(50, 50, GREEN)])
    assert sniff_media_type(data) == "application/pdf"
    assert open_document(data, LIMITS, pool).load_page(0).getpixel((5, 5)) == GREEN


def test_oversized_pdf_page_is_rendered_scaled_down_to_the_pixel_limit(pool: DecoderPool) -> None:
    limits = DocumentLimits(max_pixels=1_000_000, max_pdf_pages=10, pdf_dpi=144)
    document = open_document(make_pdf([(2000, 1000, BLUE)]), limits, pool)  # 4000 x 2000 px at 144 dpi
    page = document.load_page(0)
    assert page.width * page.height <= 1_000_000
    assert page.width * page.height > 990_000
    assert page.width / page.height == pytest.approx(2.0, abs=0.01)
    assert page.getpixel((5, 5)) == BLUE


@pytest.mark.parametrize(
    ("width", "height", "dpi", "limit"),
    [(612, 792, 144, 60_000_000), (14_400, 14_400, 144, 60_000_000), (1, 1, 144, 1), (333.3, 777.7, 300, 123_457)],
)
def test_render_scale_never_exceeds_the_limit(width: float, height: float, dpi: int, limit: int) -> None:
    scale = render_scale(width, height, dpi, limit)
    assert scale <= dpi / 72
    assert math.ceil(width * scale) * math.ceil(height * scale) <= max(limit, 1)


def test_pages_render_correctly_from_many_threads_at_once(pool: DecoderPool) -> None:
    colours = [RED, GREEN, BLUE, (255, 255, 0)]
    documents = [open_document(make_pdf([(40, 40, c)] * 3), LIMITS, pool) for c in colours]
    wrong: list[str] = []

    def work(number: int) -> None:
        for _ in range(5):
            for index in range(3):
                if documents[number].load_page(index).getpixel((5, 5)) != colours[number]:
                    wrong.append(f"document {number} page {index}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(len(documents))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []
