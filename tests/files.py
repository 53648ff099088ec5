"""Documents the tests make: PDFs written by hand, PNG headers that lie about their size."""

from __future__ import annotations

import struct
import zlib


def make_pdf(
    pages: list[tuple[float, float, tuple[int, int, int]]],
    *,
    rotate: int = 0,
    encrypt: bool = False,
    kids: str | None = None,
    fills: int = 1,
) -> bytes:
    """A minimal valid PDF: each page (width pt, height pt, colour) is one filled rectangle.

    With `fills` > 1 the rectangle is drawn that many times, in a Flate-compressed
    stream: a tiny file whose pages cost a lot to render (a page-render stall attack).
    """
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>"]
    kid_refs = kids if kids is not None else " ".join(f"{3 + 2 * i} 0 R" for i in range(len(pages)))
    objects.append(f"<< /Type /Pages /Kids [{kid_refs}] /Count {len(pages)} >>".encode())
    for number, (width, height, colour) in enumerate(pages):
        r, g, b = (c / 255 for c in colour)
        content = f"{r} {g} {b} rg".encode() + f" 0 0 {width} {height} re f".encode() * fills
        stream_filter = b""
        if fills > 1:
            content, stream_filter = zlib.compress(content, 9), b" /Filter /FlateDecode"
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {width} {height}] /Rotate {rotate} "
            f"/Contents {4 + 2 * number} 0 R >>".encode()
        )
        objects.append(b"<< /Length %d%s >>\nstream\n%s\nendstream" % (len(content), stream_filter, content))
    if encrypt:  # RC4 40-bit standard handler whose empty user password does not match
        owner, user = b"11" * 32, b"22" * 32
        objects.append(b"<< /Filter /Standard /V 1 /R 2 /Length 40 /P -44 /O <%s> /U <%s> >>" % (owner, user))
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    trailer = b"<< /Size %d /Root 1 0 R" % (len(objects) + 1)
    if encrypt:
        trailer += b" /Encrypt %d 0 R /ID [<%s> <%s>]" % (len(objects), b"ab" * 16, b"ab" * 16)
    out += b"trailer\n%s >>\nstartxref\n%d\n%%%%EOF\n" % (trailer, xref)
    return bytes(out)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but that holds one row of pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = zlib.compress(b"\x00" + b"\xff" * 3 * min(width, 1000))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", row) + chunk(b"IEND", b"")
