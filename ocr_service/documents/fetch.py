"""Safe download of user-supplied image/PDF URLs (SSRF-aware, size- and time-bounded).

A URL given to `POST /ocr/url` makes *this server* send a request, so an unchecked fetcher lets any
user read the cloud metadata service (169.254.169.254), admin ports on loopback or hosts on the
private network. The defences, in the order a fetch meets them:

1. only `http` and `https`, with a host;
2. the host name is resolved once (on the event loop, not a blocking call) and *every* address it
   resolves to must be public, unless `OCR_ALLOW_PRIVATE_URLS` is set;
3. the connection goes to the address that was checked, never to the name: the URL's host is
   replaced by the IP, the original name travels in the `Host` header and, for https, in the
   `sni_hostname` request extension, which httpcore passes to TLS as `server_hostname` (SNI *and*
   certificate verification; see the httpx docs, "Extensions" -> `"sni_hostname"`, and
   `httpcore/_async/connection.py::_connect`). A second DNS answer (DNS rebinding) therefore
   cannot redirect the connection;
4. redirects are followed here, one hop at a time, and each `Location` goes through 1-3 again;
5. the body is streamed and the download stops as soon as it passes the size limit, and one
   `asyncio.timeout` bounds the whole fetch: resolution, connects, redirects and every byte.

The response's Content-Type is not trusted either way: the caller sniffs the bytes.
Response bodies are never logged or put into error messages.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import ipaddress
import socket
from dataclasses import dataclass

import httpx

_ALLOWED_SCHEMES = ("http", "https")
_USER_AGENT = "ocr-service-fetcher/1.0"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215, local-use translation


class FetchError(Exception):
    """A URL could not be fetched; the message is shown to the user as the task's `error`."""


@dataclass(frozen=True)
class FetchPolicy:
    """Limits for one fetch, taken from Settings when the app starts."""

    max_bytes: int  # OCR_MAX_IMAGE_SIZE_MB, in bytes
    timeout: float  # OCR_IMAGE_DOWNLOAD_TIMEOUT: the whole fetch, redirects included
    allow_private: bool  # OCR_ALLOW_PRIVATE_URLS
    max_redirects: int  # OCR_MAX_REDIRECTS
    allowed_hosts: frozenset[str] = frozenset()  # OCR_URL_ALLOWED_HOSTS; empty = any host


def check_url_syntax(url: str) -> None:
    """Cheap synchronous check for request time, so a typo fails the request, not a task later.

    It does no network I/O: the address checks happen in `UrlFetcher.fetch`, where the name is
    resolved exactly once and then used for the connection.
    """
    _parse(url)


async def resolve_host(host: str, port: int) -> list[str]:
    """Return every address `host` resolves to, as strings, in resolver order.

    A module-level function so that tests can replace it (monkeypatch) instead of using real DNS.
    `loop.getaddrinfo` runs the lookup in a worker thread, so a slow DNS server does not block
    the event loop; IP literals (including odd forms like `2130706433`) come back normalised.
    """
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def forbidden_reason(address: IPAddress) -> str | None:
    """Say why `address` is not a public internet address, or None if it is.

    IPv4-mapped IPv6 addresses (`::ffff:127.0.0.1`) and NAT64 addresses are judged by the IPv4
    address they carry, because that is where the packets end up; Python 3.11's flags on the
    IPv6 form do not reflect it.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        elif address in _NAT64_WELL_KNOWN:
            # 64:ff9b::/96 reaches the embedded IPv4 address through the network's NAT64 gateway.
            address = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        elif address in _NAT64_LOCAL or address.is_site_local:
            return "a private"
    if address.is_unspecified:
        return "an unspecified"
    if address.is_loopback:
        return "a loopback"
    if address.is_link_local:
        return "a link-local"
    if address.is_multicast:
        return "a multicast"
    if address.is_reserved:
        return "a reserved"
    if address.is_private or not address.is_global:
        # `not is_global` also catches shared space such as 100.64.0.0/10 (carrier NAT).
        return "a private"
    return None


class UrlFetcher:
    """Downloads user-supplied URLs under a `FetchPolicy`; one instance lives in the app's lifespan."""

    def __init__(self, policy: FetchPolicy, transport: httpx.AsyncBaseTransport | None = None) -> None:
        if transport is None:
            # No keep-alive: the pool is keyed by (scheme, IP, port), so a pooled TLS connection
            # made for one host name could otherwise be reused for another name on the same IP,
            # skipping that name's certificate check. retries=0: a failed connect is reported.
            transport = httpx.AsyncHTTPTransport(
                limits=httpx.Limits(max_keepalive_connections=0), retries=0
            )
        self._policy = policy
        self._client = httpx.AsyncClient(
            transport=transport,
            follow_redirects=False,  # each hop is checked in `_fetch`
            trust_env=False,  # an HTTP(S)_PROXY would connect by name, undoing the pinning
            timeout=httpx.Timeout(policy.timeout),  # backstop; asyncio.timeout bounds the total
            cookies=_no_cookies(),  # one client serves all users: never carry cookies between them
            headers={"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"},
        )

    async def fetch(self, url: str) -> bytes:
        """Download `url` and return its body, or raise FetchError saying what was wrong."""
        try:
            async with asyncio.timeout(self._policy.timeout):
                return await self._fetch(url)
        except TimeoutError:
            raise FetchError(f"download took longer than {self._policy.timeout:g} s") from None

    async def aclose(self) -> None:
        """Close the HTTP client (called when the app shuts down)."""
        await self._client.aclose()

    async def _fetch(self, url: str) -> bytes:
        current = _parse(url)
        redirects = 0
        while True:
            addresses = await self._checked_addresses(current)
            response = await self._open(current, addresses)
            try:
                if response.is_redirect:  # 301/302/303/307/308 with a Location header
                    if redirects >= self._policy.max_redirects:
                        raise FetchError(f"too many redirects (limit {self._policy.max_redirects})")
                    redirects += 1
                    current = _redirect_target(current, response.headers["Location"])
                    continue
                if not response.is_success:
                    raise FetchError(f"HTTP {response.status_code} from the server")
                return await self._read_body(response)
            finally:
                await response.aclose()

    async def _checked_addresses(self, url: httpx.URL) -> list[IPAddress]:
        """Resolve the URL's host once and return the addresses to connect to, if all are allowed."""
        host = url.raw_host.decode("ascii")
        port = url.port or (443 if url.scheme == "https" else 80)
        allowed = self._policy.allowed_hosts
        if allowed and host.lower() not in allowed:  # checked before any lookup or connection
            raise FetchError(f"host {host!r} is not in OCR_URL_ALLOWED_HOSTS")
        try:
            resolved = await resolve_host(host, port)
        except (OSError, UnicodeError) as exc:  # socket.gaierror is an OSError
            raise FetchError(f"could not resolve host name {host!r} ({_reason(exc)})") from None
        # Drop IPv6 zone ids ("fe80::1%eth0") and duplicates; keep the resolver's order.
        addresses = list(dict.fromkeys(ipaddress.ip_address(a.split("%", 1)[0]) for a in resolved))
        if not addresses:
            raise FetchError(f"could not resolve host name {host!r}")
        if not self._policy.allow_private:
            # Every address, not only the first: the connection may fall back to any of them.
            for address in addresses:
                reason = forbidden_reason(address)
                if reason is not None:
                    # The address is named only when the URL itself was that address: what a
                    # host name resolves to inside the network is not the client's business.
                    shown = f" ({_show(address)})" if _is_ip_literal(host) else ""
                    raise FetchError(
                        f"URL resolves to {reason} address{shown}; set OCR_ALLOW_PRIVATE_URLS=true to allow"
                    )
        return addresses

    async def _open(self, url: httpx.URL, addresses: list[IPAddress]) -> httpx.Response:
        """Send a streaming GET for `url` to the first of the checked `addresses` that accepts.

        The request goes to the IP itself and presents itself to the server as `url`: the name
        travels in the Host header and, for https, in the `sni_hostname` extension, which
        httpcore hands to TLS as `server_hostname` (SNI and certificate verification).
        """
        host = url.netloc.decode("ascii")
        failure: Exception = FetchError("no address to try")
        for address in addresses:
            extensions = {}
            if url.scheme == "https":
                extensions["sni_hostname"] = url.raw_host.decode("ascii")
            request = self._client.build_request(
                "GET",
                url.copy_with(host=str(address), fragment=None),
                headers={"Host": host},
                extensions=extensions,
            )
            try:
                return await self._client.send(request, stream=True)
            except httpx.ConnectError as exc:
                failure = exc  # e.g. an IPv6 address without an IPv6 route: try the next one
            except httpx.TimeoutException:
                raise FetchError(f"timed out talking to {host}") from None
            except httpx.HTTPError as exc:
                raise FetchError(f"request to {host} failed ({_reason(exc)})") from None
        raise FetchError(f"could not connect to {host} ({_reason(failure)})")

    async def _read_body(self, response: httpx.Response) -> bytes:
        """Read the body, refusing early on Content-Length and stopping once it passes the limit."""
        limit = self._policy.max_bytes
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            raise FetchError(f"download exceeds the {_mb(limit)} limit")
        body = bytearray()
        try:
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > limit:
                    raise FetchError(f"download exceeds the {_mb(limit)} limit")
        except httpx.HTTPError as exc:
            raise FetchError(f"download failed: {_reason(exc)}") from None
        return bytes(body)


def _redirect_target(current: httpx.URL, location: str) -> httpx.URL:
    """The next URL of a redirect, joined against the URL as the user named it (not the IP)."""
    try:
        joined = current.join(location)
    except (httpx.InvalidURL, ValueError) as exc:
        raise FetchError(f"invalid redirect target: {_reason(exc)}") from None
    return _parse(str(joined), redirect=True)


def _parse(url: str, *, redirect: bool = False) -> httpx.URL:
    """Parse and check scheme and host; `redirect` only changes the wording of the errors."""
    where = "redirect target" if redirect else "URL"
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise FetchError(f"invalid {where}: {_reason(exc)}") from None
    if parsed.scheme not in _ALLOWED_SCHEMES:
        if redirect:
            raise FetchError("redirect to a non-http(s) URL refused")
        raise FetchError("only http and https URLs are accepted")
    if not parsed.raw_host:
        raise FetchError(f"{where} has no host name")
    return parsed


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _no_cookies() -> http.cookiejar.CookieJar:
    """A cookie jar whose policy accepts no cookie from any domain.

    Passed to the client as a bare CookieJar: httpx keeps that jar, while an `httpx.Cookies`
    would be copied into a fresh jar with the default (accept-all) policy.
    """
    return http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))


def _reason(exc: BaseException) -> str:
    """A short, single-line reason for an exception (never a response body)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _show(address: IPAddress) -> str:
    """Write an address for people: `::ffff:127.0.0.1`, not the canonical `::ffff:7f00:1`."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return f"::ffff:{address.ipv4_mapped}"
    return str(address)


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / (1024 * 1024):g} MB"
