"""The URL fetcher against a real HTTP server on 127.0.0.1, and its SSRF defences.

Every request these tests make goes to 127.0.0.1 or into an `httpx.MockTransport`: the real
transport is wrapped in `LoopbackOnlyTransport`, which refuses (and records) any other
destination, so even a broken fetcher cannot send traffic elsewhere. Host names are resolved by
a fake resolver patched into the module, never by real DNS.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from ocr_service.documents import fetch
from ocr_service.documents.fetch import (
    FetchError,
    FetchPolicy,
    UrlFetcher,
    check_url_syntax,
)

LIMIT = 64 * 1024
IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40  # not a real PNG: the fetcher must not care
PUBLIC_IP = "93.184.216.34"  # only ever handed to MockTransport, never connected to


# --- a small real HTTP server -----------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves the cases the fetcher must handle; records every request it sees."""

    protocol_version = "HTTP/1.1"  # needed for chunked bodies

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers.get("Host")))  # type: ignore[attr-defined]
        self.close_connection = True
        path = self.path
        if path == "/image":
            self._send(200, IMAGE, content_type="application/octet-stream")
        elif path == "/big-chunked":
            self._start_chunked()
            with contextlib.suppress(OSError):
                for _ in range(10 * LIMIT // 4096):
                    self._chunk(b"x" * 4096)
                self._chunk(b"")
        elif path == "/big-declared":
            # Declares a body over the limit, then never sends it: only an early refusal
            # (before reading) ends this quickly with a size error instead of a timeout.
            self.send_response(200)
            self.send_header("Content-Length", str(10 * LIMIT))
            self.end_headers()
            time.sleep(3)
        elif path == "/slow":
            self._start_chunked()
            with contextlib.suppress(OSError):
                for _ in range(600):  # "endless" for the test: a minute at most
                    self._chunk(b"y" * 10)
                    time.sleep(0.1)
        elif path.startswith("/redirect/"):
            hops = int(path.rsplit("/", 1)[1])  # /redirect/N takes N redirects to reach /image
            target = "/image" if hops <= 1 else f"/redirect/{hops - 1}"  # relative Locations
            self._send(302, b"", location=target)
        elif path == "/to-private":
            self._send(302, b"", location="http://intranet.example/secret")
        elif path == "/to-private-literal":
            self._send(301, b"", location="http://10.0.0.5/secret")
        elif path == "/to-ftp":
            self._send(302, b"", location="ftp://files.example/x.png")
        else:
            self._send(404, b"<html>secret body text</html>", content_type="text/html")

    def _send(self, status: int, body: bytes, *, content_type: str = "", location: str = "") -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        if location:
            self.send_header("Location", location)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _start_chunked(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


@pytest.fixture(scope="module")
def server() -> Iterator[http.server.ThreadingHTTPServer]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, ssl.SSLContext, list[str]]]:
    """The same handler over TLS, with a self-signed certificate for `images.example` only.

    Yields the port, a client context that trusts the certificate, and the SNI names received.
    """
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=images.example",
         "-addext", "subjectAltName=DNS:images.example"],
        check=True, capture_output=True,
    )  # fmt: skip
    server_names: list[str] = []
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    server_ctx.sni_callback = lambda sock, name, ctx: server_names.append(name)  # type: ignore[assignment,misc]
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.seen = []  # type: ignore[attr-defined]
    srv.socket = server_ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1], ssl.create_default_context(cafile=str(cert)), server_names
    srv.shutdown()
    srv.server_close()


@pytest.fixture()
def base(server: http.server.ThreadingHTTPServer) -> str:
    server.seen.clear()  # type: ignore[attr-defined]
    return f"http://127.0.0.1:{server.server_address[1]}"


# --- helpers ----------------------------------------------------------------------------------


class LoopbackOnlyTransport(httpx.AsyncBaseTransport):
    """The real transport, but only for 127.0.0.1 / ::1; anything else is recorded and refused."""

    def __init__(self, verify: ssl.SSLContext | bool = True) -> None:
        self._inner = httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_keepalive_connections=0), retries=0, verify=verify
        )
        self.refused: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host not in ("127.0.0.1", "::1"):
            self.refused.append(str(request.url))
            raise AssertionError(f"test tried to connect to {request.url.host}")
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@contextlib.asynccontextmanager
async def make_fetcher(
    *,
    allow_private: bool = True,
    timeout: float = 5.0,
    max_redirects: int = 3,
    transport: httpx.AsyncBaseTransport | None = None,
) -> AsyncIterator[UrlFetcher]:
    policy = FetchPolicy(max_bytes=LIMIT, timeout=timeout, allow_private=allow_private, max_redirects=max_redirects)
    fetcher = UrlFetcher(policy, transport=transport or LoopbackOnlyTransport())
    try:
        yield fetcher
    finally:
        await fetcher.aclose()


def fake_resolver(table: dict[str, list[str]], calls: list[str] | None = None):
    """A stand-in for `fetch.resolve_host` that answers from `table` (and records lookups)."""

    async def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        return table[host]

    return resolve


# --- syntax -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/a.png", "only http and https URLs are accepted"),
        ("file:///etc/passwd", "only http and https URLs are accepted"),
        ("example.com/a.png", "only http and https URLs are accepted"),
        ("http:///a.png", "URL has no host name"),
    ],
)
def test_check_url_syntax_refuses(url: str, message: str) -> None:
    with pytest.raises(FetchError, match=message):
        check_url_syntax(url)


def test_check_url_syntax_accepts_http_and_https() -> None:
    check_url_syntax("https://example.com/scan.pdf?sig=abc")
    check_url_syntax("http://[2606:4700::1111]:8080/a.png")


# --- downloads from the local server (allow_private=True, since it is on loopback) -------------


@pytest.mark.asyncio
async def test_downloads_octet_stream_image(base: str) -> None:
    async with make_fetcher() as fetcher:
        assert await fetcher.fetch(f"{base}/image") == IMAGE


@pytest.mark.asyncio
async def test_follows_redirects_within_the_limit(base: str, server: http.server.ThreadingHTTPServer) -> None:
    async with make_fetcher(max_redirects=3) as fetcher:
        assert await fetcher.fetch(f"{base}/redirect/3") == IMAGE
    paths = [path for path, _ in server.seen]  # type: ignore[attr-defined]
    assert paths == ["/redirect/3", "/redirect/2", "/redirect/1", "/image"]


@pytest.mark.asyncio
async def test_redirect_chain_longer_than_the_limit(base: str) -> None:
    async with make_fetcher(max_redirects=3) as fetcher:
        with pytest.raises(FetchError, match=r"too many redirects \(limit 3\)"):
            await fetcher.fetch(f"{base}/redirect/4")


@pytest.mark.asyncio
async def test_chunked_body_over_the_limit_is_cut_off(base: str) -> None:
    async with make_fetcher() as fetcher:
        with pytest.raises(FetchError, match="download exceeds the 0.0625 MB limit"):
            await fetcher.fetch(f"{base}/big-chunked")


@pytest.mark.asyncio
async def test_content_length_over_the_limit_is_refused_before_reading(base: str) -> None:
    async with make_fetcher(timeout=2.0) as fetcher:
        started = time.monotonic()
        with pytest.raises(FetchError, match="download exceeds the 0.0625 MB limit"):
            await fetcher.fetch(f"{base}/big-declared")
    assert time.monotonic() - started < 1.5


@pytest.mark.asyncio
async def test_slow_endless_body_hits_the_overall_timeout(base: str) -> None:
    # Each chunk arrives well within any per-read timeout; only a whole-download limit stops it.
    async with make_fetcher(timeout=1.0) as fetcher:
        started = time.monotonic()
        with pytest.raises(FetchError, match="download took longer than 1 s"):
            await fetcher.fetch(f"{base}/slow")
    assert time.monotonic() - started < 2.5


@pytest.mark.asyncio
async def test_http_error_status_is_reported_without_the_body(base: str) -> None:
    async with make_fetcher() as fetcher:
        with pytest.raises(FetchError) as caught:
            await fetcher.fetch(f"{base}/missing")
    assert str(caught.value) == "HTTP 404 from the server"


@pytest.mark.asyncio
async def test_connection_refused_is_a_short_fetch_error(server: http.server.ThreadingHTTPServer) -> None:
    with contextlib.closing(__import__("socket").socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connections are refused
        async with make_fetcher() as fetcher:
            with pytest.raises(FetchError, match=rf"could not connect to 127.0.0.1:{port}"):
                await fetcher.fetch(f"http://127.0.0.1:{port}/image")


@pytest.mark.asyncio
async def test_redirect_to_another_scheme_is_refused(base: str) -> None:
    async with make_fetcher() as fetcher:
        with pytest.raises(FetchError, match="redirect to a non-http"):
            await fetcher.fetch(f"{base}/to-ftp")


# --- refusals (allow_private=False) -----------------------------------------------------------


@pytest.mark.asyncio
async def test_loopback_server_is_refused_without_a_request(
    base: str, server: http.server.ThreadingHTTPServer
) -> None:
    async with make_fetcher(allow_private=False) as fetcher:
        with pytest.raises(FetchError) as caught:
            await fetcher.fetch(f"{base}/image")
    assert str(caught.value) == (
        "URL resolves to a loopback address (127.0.0.1); set OCR_ALLOW_PRIVATE_URLS=true to allow"
    )
    assert server.seen == []  # type: ignore[attr-defined]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("10.0.0.5", "a private"),
        ("192.168.1.20", "a private"),
        ("169.254.169.254", "a link-local"),
        ("::1", "a loopback"),
        ("::ffff:127.0.0.1", "a loopback"),
        ("::ffff:10.1.2.3", "a private"),
        ("fd00::1", "a private"),
        ("0.0.0.0", "an unspecified"),
        ("224.0.0.1", "a multicast"),
    ],
)
async def test_names_resolving_to_non_public_addresses_are_refused(
    monkeypatch: pytest.MonkeyPatch, address: str, kind: str
) -> None:
    monkeypatch.setattr(fetch, "resolve_host", fake_resolver({"images.example": [address]}))
    transport = LoopbackOnlyTransport()
    async with make_fetcher(allow_private=False, transport=transport) as fetcher:
        with pytest.raises(FetchError, match=rf"^URL resolves to {kind} address;") as caught:
            await fetcher.fetch("https://images.example/scan.png")
    assert address not in str(caught.value)  # what a name resolves to inside the network stays unsaid
    assert transport.refused == []


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://10.0.0.5/a.png", "10.0.0.5"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
        ("http://[::1]/a.png", "::1"),
        ("http://[::ffff:127.0.0.1]/a.png", "::ffff:127.0.0.1"),
        ("http://localhost./a.png", None),
    ],
)
async def test_ip_literals_are_checked_too(
    monkeypatch: pytest.MonkeyPatch, url: str, shown: str | None
) -> None:
    # IP literals go through the real `loop.getaddrinfo` (numeric: no DNS query is sent).
    # "localhost." is answered by the fake resolver, as names always are here.
    real = fetch.resolve_host

    async def resolve(host: str, port: int) -> list[str]:
        if host.rstrip(".") == "localhost":
            return ["127.0.0.1", "::1"]
        return await real(host, port)

    monkeypatch.setattr(fetch, "resolve_host", resolve)
    transport = LoopbackOnlyTransport()
    async with make_fetcher(allow_private=False, transport=transport) as fetcher:
        with pytest.raises(FetchError, match="set OCR_ALLOW_PRIVATE_URLS=true to allow") as caught:
            await fetcher.fetch(url)
    if shown is not None:
        assert f"({shown})" in str(caught.value)
    assert transport.refused == []


@pytest.mark.asyncio
async def test_redirect_from_allowed_url_to_private_address_is_refused(
    monkeypatch: pytest.MonkeyPatch, base: str, server: http.server.ThreadingHTTPServer
) -> None:
    # Treat the loopback test server as if it were a public host, so only the redirect is at stake.
    real_reason = fetch.forbidden_reason
    monkeypatch.setattr(
        fetch, "forbidden_reason", lambda addr: None if str(addr) == "127.0.0.1" else real_reason(addr)
    )
    monkeypatch.setattr(
        fetch, "resolve_host", fake_resolver({"127.0.0.1": ["127.0.0.1"], "intranet.example": ["10.0.0.5"]})
    )
    transport = LoopbackOnlyTransport()
    async with make_fetcher(allow_private=False, transport=transport) as fetcher:
        assert await fetcher.fetch(f"{base}/image") == IMAGE  # the shim lets the first hop through
        with pytest.raises(FetchError, match=r"private address;"):
            await fetcher.fetch(f"{base}/to-private")
    assert transport.refused == []
    assert [path for path, _ in server.seen] == ["/image", "/to-private"]  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_redirect_to_private_ip_literal_is_refused(
    monkeypatch: pytest.MonkeyPatch, base: str
) -> None:
    real_reason = fetch.forbidden_reason
    monkeypatch.setattr(
        fetch, "forbidden_reason", lambda addr: None if str(addr) == "127.0.0.1" else real_reason(addr)
    )
    transport = LoopbackOnlyTransport()
    async with make_fetcher(allow_private=False, transport=transport) as fetcher:
        with pytest.raises(FetchError, match=r"private address \(10.0.0.5\);"):
            await fetcher.fetch(f"{base}/to-private-literal")
    assert transport.refused == []


@pytest.mark.asyncio
async def test_one_private_address_among_public_ones_refuses_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch, "resolve_host", fake_resolver({"images.example": [PUBLIC_IP, "127.0.0.1"]}))
    seen: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda request: seen.append(request) or httpx.Response(200, content=IMAGE))
    async with make_fetcher(allow_private=False, transport=transport) as fetcher:
        with pytest.raises(FetchError, match=r"loopback address;"):
            await fetcher.fetch("http://images.example/a.png")
    assert seen == []


@pytest.mark.asyncio
async def test_resolution_counts_against_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    async def hang(host: str, port: int) -> list[str]:
        await asyncio.sleep(60)
        return []

    monkeypatch.setattr(fetch, "resolve_host", hang)
    async with make_fetcher(timeout=0.3) as fetcher:
        with pytest.raises(FetchError, match="download took longer than 0.3 s"):
            await fetcher.fetch("http://slow-dns.example/a.png")


@pytest.mark.asyncio
async def test_unresolvable_name(monkeypatch: pytest.MonkeyPatch) -> None:
    async def fail(host: str, port: int) -> list[str]:
        raise __import__("socket").gaierror(-2, "Name or service not known")

    monkeypatch.setattr(fetch, "resolve_host", fail)
    async with make_fetcher() as fetcher:
        with pytest.raises(FetchError, match="could not resolve host name 'nowhere.example'"):
            await fetcher.fetch("http://nowhere.example/a.png")


# --- DNS rebinding: the connection goes to the address that was checked -----------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_connects_to_the_checked_address_not_a_second_lookup(
    monkeypatch: pytest.MonkeyPatch, scheme: str
) -> None:
    answers = [[PUBLIC_IP], ["127.0.0.1"]]  # a rebinding DNS server: public first, loopback next
    lookups: list[str] = []

    async def rebinding(host: str, port: int) -> list[str]:
        lookups.append(host)
        return answers[min(len(lookups), 2) - 1]

    monkeypatch.setattr(fetch, "resolve_host", rebinding)
    seen: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda request: seen.append(request) or httpx.Response(200, content=IMAGE))
    async with make_fetcher(allow_private=False, transport=transport) as fetcher:
        assert await fetcher.fetch(f"{scheme}://images.example:8443/a.png?x=1#frag") == IMAGE

    assert lookups == ["images.example"]  # resolved exactly once
    (request,) = seen
    assert request.url.host == PUBLIC_IP  # the transport is told to connect to the checked IP
    assert request.url.port == 8443
    assert request.url.raw_path == b"/a.png?x=1"
    assert request.headers["Host"] == "images.example:8443"  # the server still sees the name
    if scheme == "https":
        assert request.extensions["sni_hostname"] == "images.example"  # TLS SNI + cert check
    else:
        assert "sni_hostname" not in request.extensions


@pytest.mark.asyncio
async def test_https_to_the_pinned_ip_verifies_the_certificate_against_the_name(
    monkeypatch: pytest.MonkeyPatch, tls_server: tuple[int, ssl.SSLContext, list[str]]
) -> None:
    # End to end through httpcore: the socket goes to 127.0.0.1, yet TLS sends SNI
    # "images.example" and checks the certificate against that name (it has no IP entry).
    port, client_ctx, server_names = tls_server
    monkeypatch.setattr(
        fetch, "resolve_host", fake_resolver({"images.example": ["127.0.0.1"], "other.example": ["127.0.0.1"]})
    )
    transport = LoopbackOnlyTransport(verify=client_ctx)
    async with make_fetcher(transport=transport) as fetcher:
        assert await fetcher.fetch(f"https://images.example:{port}/image") == IMAGE
        assert server_names == ["images.example"]
        # A name the certificate does not cover fails verification, though the IP is the same.
        with pytest.raises(FetchError, match="could not connect to other.example.*CERTIFICATE_VERIFY_FAILED"):
            await fetcher.fetch(f"https://other.example:{port}/image")


@pytest.mark.asyncio
async def test_default_transport_downloads(base: str) -> None:
    fetcher = UrlFetcher(FetchPolicy(max_bytes=LIMIT, timeout=5.0, allow_private=True, max_redirects=5))
    try:
        assert await fetcher.fetch(f"{base}/redirect/2") == IMAGE
    finally:
        await fetcher.aclose()


@pytest.mark.asyncio
async def test_each_redirect_hop_is_resolved_and_checked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter([[PUBLIC_IP], ["127.0.0.1"]])  # the same name rebinds between two hops
    monkeypatch.setattr(fetch, "resolve_host", lambda host, port: _ready(next(answers)))
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(302, headers={"Location": "/next.png"})

    async with make_fetcher(allow_private=False, transport=httpx.MockTransport(handler)) as fetcher:
        with pytest.raises(FetchError, match=r"loopback address;"):
            await fetcher.fetch("http://images.example/a.png")
    assert [r.url.host for r in seen] == [PUBLIC_IP]


@pytest.mark.asyncio
async def test_falls_back_to_the_next_checked_address_when_one_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    second = "2606:4700:4700::1111"
    monkeypatch.setattr(fetch, "resolve_host", fake_resolver({"images.example": [PUBLIC_IP, second]}))
    tried: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        tried.append(request.url.host)
        if request.url.host == PUBLIC_IP:
            raise httpx.ConnectError("Network is unreachable", request=request)
        return httpx.Response(200, content=IMAGE)

    async with make_fetcher(allow_private=False, transport=httpx.MockTransport(handler)) as fetcher:
        assert await fetcher.fetch("https://images.example/a.png") == IMAGE
    assert tried == [PUBLIC_IP, second]


@pytest.mark.asyncio
async def test_cookies_are_never_stored_or_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    # One client serves every user: a cookie set during one user's fetch must not reach another's.
    monkeypatch.setattr(fetch, "resolve_host", fake_resolver({"images.example": [PUBLIC_IP]}))
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/first":
            return httpx.Response(302, headers={"Location": "/a.png", "Set-Cookie": "session=abc; Path=/"})
        return httpx.Response(200, content=IMAGE)

    async with make_fetcher(allow_private=False, transport=httpx.MockTransport(handler)) as fetcher:
        await fetcher.fetch("http://images.example/first")
        await fetcher.fetch("http://images.example/a.png")
    assert [r.headers.get("Cookie") for r in seen] == [None, None, None]


async def _ready(value: list[str]) -> list[str]:
    return value


# --- host allowlist (OCR_URL_ALLOWED_HOSTS) ---------------------------------------------------


async def test_hosts_outside_the_allowlist_are_refused_before_any_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    lookups: list[str] = []
    monkeypatch.setattr(fetch, "resolve_host", fake_resolver({"docs.example": ["93.184.215.14"]}, lookups))
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, content=IMAGE)

    policy = FetchPolicy(max_bytes=LIMIT, timeout=5.0, allow_private=False, max_redirects=3,
                         allowed_hosts=frozenset({"docs.example"}))
    fetcher = UrlFetcher(policy, transport=httpx.MockTransport(answer))
    try:
        assert await fetcher.fetch("https://docs.example/a.png") == IMAGE
        with pytest.raises(FetchError, match="not in OCR_URL_ALLOWED_HOSTS"):
            await fetcher.fetch("https://other.example/a.png")
    finally:
        await fetcher.aclose()
    assert lookups == ["docs.example"] and len(seen) == 1
