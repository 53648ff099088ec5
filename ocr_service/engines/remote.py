"""The remote engine: each page goes to one of several `vllm serve` replicas, least loaded first.

DeepSeek-OCR is a mixture of experts, and vLLM's data parallelism runs its ranks in
lockstep; the way to use N GPUs (or N hosts) is N independent `vllm serve` replicas,
and this engine is the router in front of them. Each page is one OpenAI-style chat
completion: an `image_url` part holding the page as a lossless PNG `data:` URI, and a
text part with the prompt minus its `<image>` tag (vLLM's chat template for
DeepSeek-OCR puts `<image>` and a newline before the text, which gives exactly the
plain prompt the model expects). The sampling follows vLLM's DeepSeek-OCR recipe:
special tokens kept, and the n-gram guard's settings in `vllm_xargs`, with the
`<td>`/`</td>` ids asked of each replica's own tokenizer. A replica silently ignores
`vllm_xargs` it has no processor for (started without `--logits_processors`, or on
vLLM's V2 model runner), so before a replica takes pages, each time it comes up, the
guard's canary (`vllm_guard`) runs on it, and a replica that does not apply the guard
stays down with an error that says how to start it.

Routing: a page goes to the up replica with the fewest pages in flight (by our own
counters; ties to the one picked least recently), never past `max_pages_per_replica`
in flight on one replica; pages wait here while every replica is full. A replica
that does not answer (refused, reset, timed out, 5xx) is marked down and the page is
tried once more elsewhere; a 4xx is the page's own error. A background task checks
every replica's `/health` every `health_interval` seconds (one task per replica): it
marks an up replica down after two failed checks in a row, and brings a down one back
when it answers and passes the canary. The task and the HTTP clients belong to the event loop that
runs the first batch: `load` (a worker thread) checks the replicas with clients of
its own, so until the first batch `replica_states` shows what `load` found.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any, Literal

import httpx
from PIL import Image

from ocr_service.deepseek import TABLE_CELL_TOKENS, without_image_tag
from ocr_service.engines.base import EngineError, PageOutcome, PageOutput, PageRequest, decode
from ocr_service.engines.vllm import page_output
from ocr_service.engines.vllm_guard import CANARY_NGRAM, CANARY_PROMPT, CANARY_SIDE, CANARY_TOKENS, GuardCheck

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 2  # a page goes to at most two replicas
# `<td>` and `</td>` in DeepSeek-OCR's published vocabulary; used only where a replica
# cannot tokenize them for us.
PUBLISHED_TABLE_CELL_IDS = (128821, 128822)
CONNECT_TIMEOUT = 10.0
HEALTH_TIMEOUT = 10.0  # a replica busy on a CPU may take a moment to answer
# vLLM's server closes a connection idle for 5 s (VLLM_HTTP_TIMEOUT_KEEP_ALIVE); httpx keeps
# idle ones 5 s too, so a request could go out on a connection as the server closed it (a
# ReadError that marked a healthy replica down, seen with health checks every 5 s). Idle
# connections are dropped well before the server's limit instead.
KEEPALIVE_EXPIRY = 2.0
REPLICA_GUARD_FIX = (
    "Start `vllm serve` with --logits_processors vllm.model_executor.models.deepseek_ocr:NGramPerReqLogitsProcessor "
    "and, on vLLM 0.32, VLLM_USE_V2_MODEL_RUNNER=0 in its environment (it picks the V2 model runner on GPUs, which "
    "does not take that processor)."
)
PNG_COMPRESS_LEVEL = 1  # lossless either way; level 1 is ~30 ms for an A4 page, level 6 ~40 ms


@dataclass(frozen=True)
class RemoteOptions:
    """Where the replicas are and how pages are sent to them."""

    urls: tuple[str, ...]  # base URLs of `vllm serve` (without /v1)
    max_pages_per_replica: int
    page_timeout: float  # seconds one replica gets for one page
    startup_timeout: float  # seconds to wait for a healthy replica (at start, or when all are down)
    ngram_size: int
    window_size: int
    model: str | None = None  # the served model name; None: ask each replica's /v1/models
    api_key: str | None = None
    ignore_eos: bool = False  # benchmarks: every page generates exactly its max_tokens
    health_interval: float = 5.0


@dataclass(frozen=True)
class ReplicaState:
    """One replica as the router sees it (for /stats and /metrics).

    `pages_done` counts the pages it answered with text; `errors` the pages it failed
    to answer (no answer, timeout, 5xx), not pages it refused as invalid (4xx).
    """

    url: str
    state: Literal["up", "down"]
    pages_in_flight: int
    pages_done: int
    errors: int
    last_error: str | None


class ReplicaFailed(Exception):
    """The replica did not answer properly; the page may go to another one."""


class PageRefused(Exception):
    """The replica refused the page itself (a 4xx); another replica would too."""


class NoReplicaUp(Exception):
    """No replica was up for `startup_timeout` seconds."""


@dataclass(eq=False)  # compared by identity
class _Replica:
    """A replica's live state; touched only on the event loop that owns the engine."""

    url: str
    up: bool = False
    in_flight: int = 0
    done: int = 0
    errors: int = 0
    last_error: str | None = None
    last_pick: int = 0
    # Learnt from the replica each time it comes up (it may have been restarted differently).
    model: str | None = None
    table_cell_ids: tuple[int, ...] | None = None
    guard: GuardCheck | None = None
    client: httpx.AsyncClient | None = None

    def forget(self) -> None:
        self.model = self.table_cell_ids = self.guard = None

    def state(self) -> ReplicaState:
        return ReplicaState(
            self.url, "up" if self.up else "down", self.in_flight, self.done, self.errors, self.last_error
        )


@dataclass(frozen=True)
class EncodedPage:
    """A page ready to send: its image as a `data:` URI, and its size in pixels."""

    data_uri: str
    width: int
    height: int


class RemoteEngine:
    """Pages to `vllm serve` replicas over HTTP; see the module docstring for the rules."""

    name = "remote"
    # Pages flow continuously; the batcher keeps its page cap in flight once per replica
    # (`instances`), and this engine holds each replica to `max_pages_per_replica`.
    max_batches_in_flight = None

    def __init__(self, options: RemoteOptions) -> None:
        if not options.urls:
            raise ValueError("the remote engine needs at least one replica URL")
        self.options = options
        self._replicas = [_Replica(url.rstrip("/")) for url in options.urls]
        self._picks = 0
        self._changed: asyncio.Event | None = None  # replaced on every change: a broadcast
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watchers: list[asyncio.Task[None]] = []
        self._closing: asyncio.Task[None] | None = None  # holds the shutdown task started on the loop (the loop keeps weak references)

    # -- life ------------------------------------------------------------------

    def load(self) -> None:
        """Wait (up to `startup_timeout`) until a replica is healthy; log every replica's state."""
        asyncio.run(self._first_check())
        for replica in self._replicas:
            if not replica.up:
                logger.warning("replica %s is down for now: %s", replica.url, replica.last_error)

    async def _first_check(self) -> None:
        deadline = time.monotonic() + self.options.startup_timeout
        clients = {replica.url: self._new_client(replica.url) for replica in self._replicas}
        try:
            while True:
                await asyncio.gather(*(self._check(replica, clients[replica.url]) for replica in self._replicas))
                if any(replica.up for replica in self._replicas):
                    return
                if time.monotonic() >= deadline:
                    raise RuntimeError(
                        f"no vLLM replica became healthy within {self.options.startup_timeout:g} s "
                        f"(OCR_REMOTE_STARTUP_TIMEOUT): {self._last_errors(self._replicas)}"
                    )
                await asyncio.sleep(min(self.options.health_interval, max(0.0, deadline - time.monotonic())))
        finally:
            await asyncio.gather(*(client.aclose() for client in clients.values()))

    def close(self) -> None:
        """Stop the health checks and close the HTTP clients (from any thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            if asyncio.get_running_loop() is loop:  # on the loop itself: cannot wait here
                self._closing = loop.create_task(self._shutdown())
                return
        if loop.is_running():
            done: Future[None] = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            done.result(timeout=30)

    async def _shutdown(self) -> None:
        for watcher in self._watchers:
            watcher.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        self._watchers = []
        for replica in self._replicas:
            if replica.client is not None:
                await replica.client.aclose()
                replica.client = None
        self._loop = None

    @property
    def instances(self) -> int:
        """The replicas configured (the `Parallel` protocol: the batcher's page cap applies to each)."""
        return len(self._replicas)

    def replica_states(self) -> list[ReplicaState]:
        """A snapshot of every replica, in the order of `urls`."""
        return [replica.state() for replica in self._replicas]

    def _start(self) -> None:
        """Clients and health checks on the running loop (the first batch's)."""
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        for replica in self._replicas:
            replica.client = self._new_client(replica.url)
            self._watchers.append(self._loop.create_task(self._watch(replica), name=f"health {replica.url}"))

    def _new_client(self, url: str) -> httpx.AsyncClient:
        slots = self.options.max_pages_per_replica + 2  # the pages, a health check, a tokenize
        headers = {"Authorization": f"Bearer {self.options.api_key}"} if self.options.api_key else {}
        return httpx.AsyncClient(
            base_url=url,
            headers=headers,
            timeout=httpx.Timeout(self.options.page_timeout, connect=CONNECT_TIMEOUT),
            limits=httpx.Limits(max_connections=slots, max_keepalive_connections=slots, keepalive_expiry=KEEPALIVE_EXPIRY),
        )

    # -- health ----------------------------------------------------------------

    async def _watch(self, replica: _Replica) -> None:
        while True:
            await asyncio.sleep(self.options.health_interval)
            if replica.client is None:
                return
            try:
                await self._check(replica, replica.client)
            except Exception:  # a bug must not stop the checks for good
                logger.exception("health check of %s failed", replica.url)

    async def _check(self, replica: _Replica, client: httpx.AsyncClient) -> None:
        """One health check; an up replica that fails it is asked once more before it counts as down."""
        error = await self._probe(replica, client)
        if error is not None and replica.up:
            error = await self._probe(replica, client)  # a blip, or a connection closed as it was reused
        if error is not None:
            if replica.up:
                logger.warning("replica %s is down: %s", replica.url, error)
            elif error != replica.last_error:  # a new reason (say, it answers now but fails the canary)
                logger.warning("replica %s is not ready: %s", replica.url, error)
            replica.up = False
            replica.last_error = error
            replica.forget()
            self._notify()
        elif not replica.up:
            logger.info(
                "replica %s is up: model %s, <td>/</td> ids %s, n-gram guard %s",
                replica.url,
                replica.model,
                replica.table_cell_ids,
                replica.guard.summary() if replica.guard is not None else "not checked",
            )
            replica.up = True
            self._notify()

    async def _probe(self, replica: _Replica, client: httpx.AsyncClient) -> str | None:
        """`GET /health`; a replica coming up also tells its model and ids, and runs the
        guard's canary. The error, or None."""
        try:
            response = await client.get("/health", timeout=HEALTH_TIMEOUT)
            if response.status_code != 200:
                raise ReplicaFailed(f"/health answered HTTP {response.status_code}")
            if replica.model is None:
                replica.model = self.options.model or await _served_model(client)
            if replica.table_cell_ids is None:
                replica.table_cell_ids = await _table_cell_ids(client, replica.model)
            if replica.guard is None:
                replica.guard = await self._check_guard(client, replica.model)
        except (httpx.HTTPError, ReplicaFailed, ValueError, KeyError, TypeError, IndexError) as exc:
            return _describe(exc)
        return None

    async def _check_guard(self, client: httpx.AsyncClient, model: str) -> GuardCheck:
        """The canary on one replica: a blank page twice, greedily past EOS, with and without
        a small n-gram rule. Raises `ReplicaFailed` where the guard is not applied."""
        image = await asyncio.to_thread(encode_page, PageRequest.of_image(Image.new("RGB", (CANARY_SIDE,) * 2, "white"), ""))
        assert isinstance(image, EncodedPage)
        rule = (CANARY_NGRAM, CANARY_TOKENS)

        async def generate(ngram: tuple[int, int] | None) -> tuple[int, ...]:
            body = chat_request(
                model=model,
                prompt=CANARY_PROMPT,
                image_uri=image.data_uri,
                temperature=0.0,
                max_tokens=CANARY_TOKENS,
                ngram_size=ngram[0] if ngram else 0,
                window_size=ngram[1] if ngram else 0,
                table_cell_ids=(),
                ignore_eos=True,
            )
            if ngram is None:
                del body["vllm_xargs"]
            body["return_token_ids"] = True
            response = await client.post("/v1/chat/completions", json=body)
            if response.status_code != 200:
                raise ReplicaFailed(f"the n-gram guard's canary failed: HTTP {response.status_code}: {_error_message(response)}")
            return tuple(int(token) for token in response.json()["choices"][0]["token_ids"])

        guarded, unguarded = await asyncio.gather(generate(rule), generate(None))
        check = GuardCheck(ngram_size=CANARY_NGRAM, window_size=CANARY_TOKENS, guarded_ids=guarded, unguarded_ids=unguarded)
        if not check.applied:
            raise ReplicaFailed(
                f"it does not apply DeepSeek-OCR's n-gram repetition guard: the canary repeated {check.guarded_repeats} "
                f"{CANARY_NGRAM}-grams in {len(guarded)} tokens with the guard's rule in the request, so hard pages "
                f"would loop to max_tokens. {REPLICA_GUARD_FIX}"
            )
        if not check.conclusive:
            logger.warning("n-gram guard check inconclusive on %s: %s", client.base_url, check.summary())
        return check

    def _mark_down(self, replica: _Replica, error: str) -> None:
        replica.errors += 1
        replica.last_error = error
        if replica.up:
            logger.warning("replica %s is down: %s", replica.url, error)
            replica.up = False
            replica.forget()  # it may come back as another process: learn and check it again
        self._notify()

    def _notify(self) -> None:
        """Wake every page waiting for a replica (capacity or state changed)."""
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    # -- pages -----------------------------------------------------------------

    async def run(self, pages: Sequence[PageRequest]) -> AsyncIterator[tuple[int, PageOutcome]]:
        """Send every page at once; yield each outcome as its replica answers.

        If the consumer stops early, the requests still open are cancelled (vLLM
        aborts a request whose client disconnects).
        """
        self._start()
        tasks = [asyncio.create_task(self._run_page(index, page)) for index, page in enumerate(pages)]
        try:
            for next_done in asyncio.as_completed(tasks):
                yield await next_done
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _run_page(self, index: int, request: PageRequest) -> tuple[int, PageOutcome]:
        page = await asyncio.to_thread(encode_page, request)
        if isinstance(page, Exception):
            return index, page
        tried: list[_Replica] = []
        failures: list[str] = []
        for _ in range(MAX_ATTEMPTS):
            try:
                replica = await self._acquire(tried)
            except NoReplicaUp as exc:
                failures.append(str(exc))
                break
            tried.append(replica)
            try:
                output = await self._send(replica, request, page)
            except ReplicaFailed as exc:
                failures.append(f"{replica.url}: {exc}")
                self._mark_down(replica, str(exc))
                continue
            except PageRefused as exc:
                return index, EngineError(str(exc))
            finally:
                replica.in_flight -= 1
                self._notify()
            replica.done += 1
            return index, replace(output, width=page.width, height=page.height)
        return index, EngineError(f"no vLLM replica answered the page: {'; '.join(failures)}")

    async def _acquire(self, tried: Sequence[_Replica]) -> _Replica:
        """A slot on the least loaded up replica; waits while all are full or down."""
        deadline: float | None = None
        while True:
            replica = self._pick(tried)
            if replica is not None:
                self._picks += 1
                replica.last_pick = self._picks
                replica.in_flight += 1
                return replica
            changed = self._changed
            assert changed is not None, "run() starts the engine"
            if any(replica.up for replica in self._replicas):
                deadline = None
                await changed.wait()
                continue
            now = time.monotonic()
            if deadline is None:
                deadline = now + self.options.startup_timeout
            if now >= deadline:
                raise NoReplicaUp(
                    f"no replica up for {self.options.startup_timeout:g} s: {self._last_errors(self._replicas)}"
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(deadline - now):
                    await changed.wait()

    def _pick(self, tried: Sequence[_Replica]) -> _Replica | None:
        """The replica for a page's next attempt, or None to wait.

        A retry waits for a replica it has not tried while one is up; it goes back to
        one it tried only when that one is up again and no other is.
        """
        up = [replica for replica in self._replicas if replica.up]
        fresh = [replica for replica in up if replica not in tried]
        candidates = [replica for replica in (fresh or up) if replica.in_flight < self.options.max_pages_per_replica]
        if not candidates:
            return None
        return min(candidates, key=lambda replica: (replica.in_flight, replica.last_pick))

    async def _send(self, replica: _Replica, request: PageRequest, page: EncodedPage) -> PageOutput:
        assert replica.client is not None and replica.model is not None and replica.table_cell_ids is not None
        body = await asyncio.to_thread(
            _json_bytes,
            chat_request(
                model=replica.model,
                prompt=request.prompt,
                image_uri=page.data_uri,
                temperature=request.temperature,
                max_tokens=request.max_tokens,
                ngram_size=self.options.ngram_size,
                window_size=self.options.window_size,
                table_cell_ids=replica.table_cell_ids,
                ignore_eos=self.options.ignore_eos,
            ),
        )
        try:
            response = await replica.client.post(
                "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}
            )
        except httpx.RequestError as exc:  # refused, reset, timed out, a garbled answer
            raise ReplicaFailed(_describe(exc)) from exc
        if response.status_code >= 500:
            raise ReplicaFailed(f"HTTP {response.status_code}: {_error_message(response)}")
        if response.status_code >= 400:
            raise PageRefused(f"vLLM at {replica.url} refused the page (HTTP {response.status_code}): {_error_message(response)}")
        return completion_output(response)

    @staticmethod
    def _last_errors(replicas: Iterable[_Replica]) -> str:
        return "; ".join(f"{replica.url}: {replica.last_error or 'no answer yet'}" for replica in replicas)


def chat_request(
    *,
    model: str,
    prompt: str,
    image_uri: str,
    temperature: float,
    max_tokens: int,
    ngram_size: int,
    window_size: int,
    table_cell_ids: Sequence[int],
    ignore_eos: bool = False,
) -> dict[str, Any]:
    """The body of one page's `/v1/chat/completions` request (vLLM's DeepSeek-OCR recipe)."""
    content: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": image_uri}}]
    text = without_image_tag(prompt)
    if text:  # vLLM renders an empty text part as "<image>\n", the plain prompt has none
        content.append({"type": "text", "text": text})
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "temperature": temperature,
        "max_tokens": max_tokens,
        "skip_special_tokens": False,  # the grounding tags are special tokens
        "vllm_xargs": {
            "ngram_size": ngram_size,
            "window_size": window_size,
            "whitelist_token_ids": list(table_cell_ids),
        },
    }
    if ignore_eos:
        body["ignore_eos"] = True
    return body


def completion_output(response: httpx.Response) -> PageOutput:
    """A `PageOutput` from a 200 answer; a malformed one is the page's error."""
    try:
        body = response.json()
        choice = body["choices"][0]
        text = choice["message"]["content"] or ""
        tokens = int(body["usage"]["completion_tokens"])
        prompt_tokens = body["usage"].get("prompt_tokens")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise PageRefused(f"vLLM answered without a completion: {response.text[:300]!r}") from exc
    return page_output(text, choice.get("finish_reason"), tokens, prompt_tokens if isinstance(prompt_tokens, int) else None)


def _json_bytes(body: dict[str, Any]) -> bytes:
    """The request body as bytes (run off the loop: a page's image makes it megabytes)."""
    return json.dumps(body).encode()


def encode_page(request: PageRequest) -> EncodedPage | Exception:
    """Decode the page and encode it as a PNG `data:` URI (blocking; run off the loop).

    PNG, not JPEG: lossless, so the replica's model reads the same pixels as the
    in-process engines do (JPEG rings around thin text strokes), and for text pages it
    is also the smaller file (an A4 page at 150 dpi: 216 KB against 542 KB at JPEG q95).
    """
    page = decode(request)
    if isinstance(page, Exception):
        return page
    buffer = io.BytesIO()
    page.image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return EncodedPage(f"data:image/png;base64,{data}", page.image.width, page.image.height)


async def _served_model(client: httpx.AsyncClient) -> str:
    """The first model `/v1/models` lists (a replica serves one)."""
    response = await client.get("/v1/models", timeout=HEALTH_TIMEOUT)
    response.raise_for_status()
    return str(response.json()["data"][0]["id"])


async def _table_cell_ids(client: httpx.AsyncClient, model: str) -> tuple[int, ...]:
    """The ids of `<td>` and `</td>` in the replica's tokenizer (its `/tokenize` endpoint).

    Falls back to DeepSeek-OCR's published ids, with a warning, where the replica
    cannot say (an older vLLM, a gateway that hides the endpoint, a token that splits).
    Connection errors propagate: the replica is then not ready.
    """
    ids: list[int] = []
    for token in TABLE_CELL_TOKENS:
        response = await client.post(
            "/tokenize",
            json={"model": model, "prompt": token, "add_special_tokens": False},
            timeout=HEALTH_TIMEOUT,
        )
        tokens = None
        with contextlib.suppress(ValueError, AttributeError):
            tokens = response.json().get("tokens") if response.status_code == 200 else None
        if not (isinstance(tokens, list) and len(tokens) == 1 and isinstance(tokens[0], int)):
            logger.warning(
                "%s could not tokenize %s (HTTP %d: %s); using DeepSeek-OCR's published ids %s",
                client.base_url,
                token,
                response.status_code,
                response.text[:200],
                PUBLISHED_TABLE_CELL_IDS,
            )
            return PUBLISHED_TABLE_CELL_IDS
        ids.append(tokens[0])
    return tuple(ids)


def _error_message(response: httpx.Response) -> str:
    """vLLM's own message from an error answer (`{"error": {"message": ...}}`), else the text."""
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        body = response.json()
        error = body.get("error")
        message = error.get("message") if isinstance(error, dict) else body.get("message") or body.get("detail")
        if message:
            return str(message)
    return response.text[:300] or response.reason_phrase


def _describe(exc: BaseException) -> str:
    """An error as a short line; httpx's timeouts have empty messages."""
    text = str(exc)
    if isinstance(exc, ReplicaFailed):
        return text
    if isinstance(exc, httpx.TimeoutException):
        return f"{type(exc).__name__}: no answer in time" + (f" ({text})" if text else "")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
