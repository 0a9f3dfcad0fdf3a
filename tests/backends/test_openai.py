"""The OpenAI-compatible backend against an in-test HTTP server that injects failures.

The server (`FakeServer`, a `ThreadingHTTPServer` on 127.0.0.1, random port) speaks the
parts of vLLM's API the backend uses: `/v1/models`, `/v1/completions`, `/tokenize`,
`/detokenize`. Its completions come from the scripted backend double, so a whole run (the
synthetic task, graded) goes through it. It fails chosen attempts with 429s, 500s and
responses slower than the client's timeout. `openai_style=True` makes it behave like a
hosted API: no tokenizer endpoints, no token ids, stop strings trimmed, no `stop_reason`.
`merges=("\nS", ...)` adds multi-character tokens to its vocabulary (ids from 1000; other
characters are their code points), and it stops as vLLM does: the text is cut right after
the stop string, the token the stop string ends inside stays whole in `token_ids`.
The real-server tests live in test_vllm.py (slow).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ttc.backends.openai import OpenAIBackend, OpenAIBackendConfig, RequestStats
from ttc.errors import BackendError, ConfigError
from ttc.launch import compose
from ttc.runner import Runner
from ttc.store import Store
from ttc.testing import PROMPT_END, ScriptedBackend, ScriptedBackendConfig
from ttc.types import GenerateRequest, Problem, Sampling

SECRET = "sk-test-0123456789abcdef-never-store-me"


class _Listener(ThreadingHTTPServer):
    request_queue_size = 256  # a backend opens up to max_concurrency connections at once


class FakeServer:
    """An OpenAI/vLLM-compatible server over the scripted backend double.

    `plan(body)` returns the failures the attempts at one request body meet, in order
    (`"429"`, `"500"`, `"timeout"`), before it succeeds; by default a deterministic mix
    keyed on the body, so every kind of failure occurs in a run and every request still
    completes within four attempts.
    """

    def __init__(
        self,
        *,
        openai_style: bool = False,
        delay_s: float = 0.0,
        merges: tuple[str, ...] = (),
        port: int = 0,
    ) -> None:
        self.openai_style = openai_style
        self.merges = {piece: 1000 + i for i, piece in enumerate(merges)}
        self.pieces = {i: piece for piece, i in self.merges.items()}
        self.delay_s = delay_s
        self.slow_s = 0.6
        self.scripted = ScriptedBackend(ScriptedBackendConfig(steps=2, p_correct=0.7))
        self.lock = threading.Lock()
        self.attempts: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()
        self.served = 0
        self.auth: set[str | None] = set()
        self.bodies: list[dict[str, Any]] = []
        self.inflight = 0
        self.max_inflight = 0
        self.seen_prompts: list[str] = []
        self.judged = 0
        self.stream_delay_s = 0.002
        """Seconds between streamed chunks (one token each)."""
        self.streams = 0
        self.disconnects = 0
        """Streams the client closed before their end (the server noticed on a write)."""
        self.unsent_tokens = 0
        """Tokens of disconnected streams that were never generated or sent."""
        self.plan = self.default_plan
        self.httpd = _Listener(("127.0.0.1", port), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    @staticmethod
    def default_plan(body: dict[str, Any]) -> list[str]:
        if "always-500" in str(body.get("prompt")):
            return ["500"] * 100
        key = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest()[0]
        return [[], ["429"], ["500", "429"], ["timeout"], []][key % 5]

    def __enter__(self) -> FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- the vocabulary -------------------------------------------------------------------
    def tokens(self, text: str) -> list[int]:
        """Greedy longest match over the merges, else one id per character."""
        out, i = [], 0
        while i < len(text):
            piece = max((m for m in self.merges if text.startswith(m, i)), key=len, default="")
            out.append(self.merges[piece] if piece else ord(text[i]))
            i += max(len(piece), 1)
        return out

    def text(self, ids: list[int]) -> str:
        return "".join(self.pieces.get(t) or chr(t) for t in ids)

    def stop_as_vllm(self, req: GenerateRequest) -> list[tuple[str, list[int], str, str | None]]:
        """Each sample's (text, token ids, finish reason, stop string) as vLLM stops: the
        whole solution is decoded token by token; at the first token whose text completes
        a stop string the text is cut right after it and that token is kept; past
        `max_tokens` tokens it ends by length."""
        whole = self.scripted._generate(
            GenerateRequest(
                req.prompt, None, dataclasses.replace(req.sampling, stop=(), max_tokens=10**6)
            )
        )
        out = []
        for g in whole.generations:
            ids = self.tokens(g.text)
            for k in range(1, min(len(ids), req.sampling.max_tokens) + 1):
                seen = self.text(ids[:k])
                ends = [(seen.find(st) + len(st), st) for st in req.sampling.stop if st in seen]
                if ends:
                    end, stop = min(ends)
                    out.append((seen[:end], ids[:k], "stop", stop))
                    break
            else:
                if len(ids) > req.sampling.max_tokens:
                    ids = ids[: req.sampling.max_tokens]
                    out.append((self.text(ids), ids, "length", None))
                else:
                    out.append((g.text, ids, "stop", None))
        return out

    # -- the API --------------------------------------------------------------------------
    def judge(self, text: str, body: dict[str, Any]) -> dict[str, Any]:
        """A yes/no question from the judge reward: P(Yes) is high when the solution's
        boxed answer is the problem's (`answer=` in the question), low otherwise, with a
        little deterministic noise; the top-k alternatives carry both and a third token."""
        wanted = re.search(r"answer=(-?\d+)", text)
        stated = re.findall(r"\\boxed\{([^}]*)\}", text)
        right = bool(wanted and stated and stated[-1] == wanted.group(1))
        noise = hashlib.sha256(text.encode()).digest()[0] / 255 * 0.1
        p_yes = (0.75 if right else 0.2) + noise
        alternatives = {"Yes": p_yes, "No": (1 - p_yes) * 0.8, "The": (1 - p_yes) * 0.2}
        as_ids = bool(body.get("return_tokens_as_token_ids"))
        top = {
            (f"token_id:{ord(word[0])}" if as_ids else word[0]): math.log(p)
            for word, p in alternatives.items()
        }
        word = "Y" if p_yes > 0.5 else "N"
        with self.lock:
            cached = max((_common(text, p) for p in self.seen_prompts), default=0)
            self.seen_prompts.append(text)
        choice = {
            "index": 0,
            "text": word,
            "finish_reason": "length",
            "token_ids": [ord(word)],
            "logprobs": {
                "token_logprobs": [math.log(max(p_yes, 1 - p_yes))],
                "top_logprobs": [top] if int(body.get("logprobs") or 0) > 1 else None,
            },
        }
        self.judged += 1
        return {
            "id": "cmpl-judge",
            "choices": [choice],
            "usage": {
                "prompt_tokens": len(text),
                "completion_tokens": 1,
                "prompt_tokens_details": {"cached_tokens": cached},
            },
        }

    def completions(self, body: dict[str, Any]) -> dict[str, Any]:
        prompt = body["prompt"]
        text = prompt if isinstance(prompt, str) else self.text(prompt)
        if "Answer Yes or No." in text:
            return self.judge(text, body)
        stop = tuple(body.get("stop") or ())
        req = GenerateRequest(
            prompt=text,
            prompt_token_ids=None,
            sampling=Sampling(
                n=int(body.get("n", 1)),
                max_tokens=int(body["max_tokens"]),
                stop=stop,
                seed=body.get("seed"),
                logprobs=body.get("logprobs") is not None,
            ),
        )
        result = self.scripted._generate(req)
        as_vllm = self.stop_as_vllm(req) if self.merges else None
        with self.lock:  # a prefix cache: the longest prefix shared with an earlier prompt
            cached = max((_common(text, p) for p in self.seen_prompts), default=0)
            self.seen_prompts.append(text)
        cached = min(len(self.tokens(text[:cached])), len(self.tokens(text)))
        choices = []
        for i, g in enumerate(result.generations):
            out = g.text
            keep = body.get("include_stop_str_in_output", False)
            if g.finish_reason == "stop" and g.stop_reason and not keep:
                out = out[: out.rfind(g.stop_reason)]
            choice: dict[str, Any] = {
                "index": i,
                "text": out,
                "finish_reason": "length" if g.finish_reason == "length" else "stop",
                "logprobs": self.logprobs_of(text, out, body) if g.logprobs else None,
            }
            if not self.openai_style:
                choice["stop_reason"] = g.stop_reason
                if body.get("return_token_ids"):
                    choice["token_ids"] = list(g.token_ids)
            if as_vllm is not None:
                choice["text"], ids, choice["finish_reason"], choice["stop_reason"] = as_vllm[i]
                if "token_ids" in choice:
                    choice["token_ids"] = ids
                if g.logprobs:
                    choice["logprobs"] = {"token_logprobs": [-0.1] * len(ids)}
            choices.append(choice)
        # Reversed on purpose: the backend must order choices by index.
        return {
            "id": "cmpl-1",
            "object": "text_completion",
            "model": body["model"],
            "choices": choices[::-1],
            "usage": {
                "prompt_tokens": len(self.tokens(text)),
                "completion_tokens": (
                    sum(len(v[1]) for v in as_vllm)
                    if as_vllm is not None
                    else result.usage.completion_tokens
                ),
                "prompt_tokens_details": {"cached_tokens": cached},
            },
        }

    def chunks(
        self, answer: dict[str, Any], body: dict[str, Any]
    ) -> Iterator[tuple[dict[str, Any], int, bool]]:
        """The stream of a completion: `(chunk, tokens in it, whether an engine step ends
        with it)`, one token per chunk, the choices interleaved (an engine step makes one
        token of every running sequence); logprobs with top-k alternatives whose
        confidence follows whether the trace's answer is right, noisily
        (`confidence_of`)."""
        choices = sorted(answer["choices"], key=lambda c: c["index"])
        usage = dict(answer["usage"])
        sent = 0
        longest = max(len(c["text"]) for c in choices)
        for pos in range(longest):
            running = [c for c in choices if pos < len(c["text"])]
            for c in running:
                text = c["text"]
                last = pos == len(text) - 1
                part: dict[str, Any] = {
                    "index": c["index"],
                    "text": text[pos],
                    "finish_reason": c["finish_reason"] if last else None,
                    "stop_reason": c.get("stop_reason") if last else None,
                }
                if "token_ids" in c:
                    part["token_ids"] = [ord(text[pos])]
                if c.get("logprobs"):
                    rows = c["logprobs"].get("top_logprobs")
                    part["logprobs"] = {
                        "token_logprobs": [c["logprobs"]["token_logprobs"][pos]],
                        "top_logprobs": [rows[pos]] if rows else None,
                    }
                sent += 1
                # vLLM's running usage: counts only; the cache details come in the last chunk
                counts = {k: v for k, v in usage.items() if k != "prompt_tokens_details"}
                chunk_usage = {**counts, "completion_tokens": sent}
                step_ends = c is running[-1]
                yield {"id": "cmpl-s", "choices": [part], "usage": chunk_usage}, 1, step_ends
        yield {"id": "cmpl-s", "choices": [], "usage": usage}, 0, False

    def logprobs_of(self, prompt: str, text: str, body: dict[str, Any]) -> dict[str, Any]:
        """The `logprobs` of a choice: each token's, and its top-k alternatives when more
        than one was asked for (`confidence_of`)."""
        k = int(body.get("logprobs") or 1)
        tops = [self.confidence_of(prompt, text, pos, k) for pos in range(len(text))]
        as_ids = bool(body.get("return_tokens_as_token_ids"))
        return {
            "token_logprobs": [top[0][1] for top in tops],
            "top_logprobs": (
                [{(f"token_id:{t}" if as_ids else chr(t)): lp for t, lp in top} for top in tops]
                if k > 1
                else None
            ),
        }

    @staticmethod
    def confidence_of(prompt: str, text: str, pos: int, k: int) -> list[tuple[int, float]]:
        """Top-k `(id, logprob)` at one position: sure (top token ~ -0.05) on traces
        whose boxed answer is right, unsure (top ~ -1.2, a flat tail) on wrong ones; a
        trace in five (hashed) is flipped, so confidence predicts correctness only
        mostly, as in real models."""
        wanted = re.search(r"answer=(-?\d+)", prompt)
        stated = re.findall(r"\\boxed\{([^}]*)\}", text)
        right = bool(wanted and stated and stated[-1] == wanted.group(1))
        digest = hashlib.sha256(f"{prompt}|{text}".encode()).digest()
        if digest[0] % 5 == 0:
            right = not right
        jitter = (digest[1 + pos % 30] / 255 - 0.5) * 0.2
        head = (-0.05 if right else -1.2) + jitter / 4
        tail = -4.0 if right else -1.6
        return [(ord(text[pos]), head)] + [
            (1000 + j, tail - 0.1 * j + jitter) for j in range(k - 1)
        ]

    def tokenize(self, body: dict[str, Any]) -> dict[str, Any]:
        if "messages" in body:
            text = body["messages"][-1]["content"] + "\n" + PROMPT_END
        else:
            text = body["prompt"]
        ids = self.tokens(text)
        return {"tokens": ids, "count": len(ids)}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: dict[str, Any], **headers: str) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout we caused)

            def _stream(self, answer: dict[str, Any], body: dict[str, Any]) -> None:
                """Server-sent events, one token per chunk, choices interleaved, like
                vLLM's stream with `continuous_usage_stats`; a closed connection stops
                the generation (vLLM aborts the request)."""
                chunks = list(server.chunks(answer, body))
                # streams run at different speeds (queueing, lengths): 1x to 3x the delay
                pace = server.stream_delay_s * (1 + len(json.dumps(body, sort_keys=True)) % 3)
                with server.lock:
                    server.streams += 1
                sent = 0
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()
                    for chunk, _, step_ends in chunks:
                        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                        self.wfile.flush()
                        sent += 1
                        if pace and step_ends:
                            time.sleep(pace)
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    with server.lock:
                        server.disconnects += 1
                        server.unsent_tokens += sum(n for _, n, _ in chunks[sent:])

            def do_GET(self) -> None:
                server.auth.add(self.headers.get("Authorization"))
                if self.path == "/v1/models":
                    self._send(200, {"data": [{"id": "scripted", "object": "model"}]})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:
                server.auth.add(self.headers.get("Authorization"))
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                if self.path in ("/tokenize", "/detokenize"):
                    if server.openai_style:
                        self._send(404, {"error": "not found"})
                    elif self.path == "/tokenize":
                        self._send(200, server.tokenize(body))
                    else:
                        self._send(200, {"prompt": server.text(body["tokens"])})
                    return
                if self.path != "/v1/completions":
                    self._send(404, {"error": "not found"})
                    return
                if server.openai_style and "include_stop_str_in_output" in body:
                    self._send(400, {"error": "Unrecognized request argument"})
                    return
                key = json.dumps(body, sort_keys=True)
                with server.lock:
                    attempt = server.attempts[key]
                    server.attempts[key] += 1
                    server.bodies.append(body)
                    server.inflight += 1
                    server.max_inflight = max(server.max_inflight, server.inflight)
                released = False

                def release() -> None:
                    # before the answer's last bytes go out: once the client has them it
                    # may send its next request, which must not count this one as open
                    nonlocal released
                    if not released:
                        released = True
                        with server.lock:
                            server.inflight -= 1

                try:
                    plan = server.plan(body)
                    failure = plan[attempt] if attempt < len(plan) else None
                    if failure is not None:
                        with server.lock:
                            server.injected[failure] += 1
                    if failure == "429":
                        release()
                        self._send(429, {"error": "rate limited"}, **{"Retry-After": "0"})
                    elif failure == "500":
                        release()
                        self._send(500, {"error": "internal error"})
                    else:
                        if failure == "timeout":
                            time.sleep(server.slow_s)
                        elif server.delay_s:
                            time.sleep(server.delay_s)
                        answer = server.completions(body)
                        with server.lock:
                            server.served += 1
                        if body.get("stream"):
                            self._stream(answer, body)
                        else:
                            release()
                            self._send(200, answer)
                finally:
                    release()

        return Handler


def _common(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with FakeServer() as srv:
        yield srv


def _config(srv: FakeServer, **kw: Any) -> OpenAIBackendConfig:
    base: dict[str, Any] = dict(
        base_url=srv.base_url,
        timeout_s=0.3,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
        max_attempts=4,
        api_key_env="TTC_TEST_OPENAI_KEY",
    )
    base.update(kw)
    return OpenAIBackendConfig(**base)


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _with_backend(cfg: OpenAIBackendConfig, fn: Any) -> Any:
    backend = OpenAIBackend(cfg)
    await backend.start()
    try:
        return await fn(backend)
    finally:
        await backend.close()


def test_generations_usage_and_server_tokenizer(server: FakeServer) -> None:
    server.plan = lambda body: []

    async def go(b: OpenAIBackend) -> Any:
        assert b.codec_kind == "server" and b.model_name == "scripted"
        prompt = b.render(Problem(id="p", prompt="Problem 1 answer=42"))
        assert prompt == "Problem 1 answer=42\n" + PROMPT_END
        ids = b.encode(prompt)
        assert b.decode(ids) == prompt
        s = Sampling(n=3, max_tokens=200, stop=("\n\n",), seed=5, logprobs=True)
        first = await b.agenerate(GenerateRequest(prompt, tuple(ids), s))
        again = await b.agenerate(GenerateRequest(prompt, tuple(ids), s))
        return first, again, ids

    first, again, ids = _run(_with_backend(_config(server), go))
    assert len(first.generations) == 3
    for g in first.generations:
        assert g.finish_reason == "stop" and g.text.endswith("\n\n")
        assert g.stop_reason == "\n\n"
        assert g.text.startswith("Step 1: ")
        assert "".join(chr(t) for t in g.token_ids) == g.text  # the server's own ids
        assert g.logprobs is not None and len(g.logprobs) == len(g.token_ids)
    assert [g.text for g in first.generations] == [g.text for g in again.generations]
    body = server.bodies[0]
    assert body["n"] == 3 and body["seed"] == 5 and body["stop"] == ["\n\n"]
    assert body["include_stop_str_in_output"] is True and body["return_token_ids"] is True
    # the tokenizer is known (the server's): ids, so the server never re-tokenises text
    assert body["prompt"] == ids
    u1, u2 = first.usage, again.usage
    assert u1.prompt_tokens == len("Problem 1 answer=42\n" + PROMPT_END)
    assert u1.cached_prompt_tokens == 0
    assert u2.cached_prompt_tokens == u2.prompt_tokens  # read from prompt_tokens_details
    assert u1.completion_tokens == sum(len(g.token_ids) for g in first.generations)


@pytest.mark.parametrize("prompt_token_ids", [False, True])
def test_a_stop_string_ending_inside_a_token_leaves_text_and_tokens_agreeing(
    prompt_token_ids: bool,
) -> None:
    """The server's vocabulary has a "\nS" token, so "Step 1: ok.\n\nStep 2" tokenizes
    as ... "\n", "\nS" ... and the "\n\n" stop ends inside "\nS": the server cuts the
    text after the stop string and keeps that token (as vLLM does). The backend's ids must
    spell its text (the cut token's head re-encoded), with one logprob per id."""
    with FakeServer(merges=("\nS", "ok", "Step")) as srv:
        srv.plan = lambda body: []

        async def go(b: OpenAIBackend) -> Any:
            prompt = b.render(Problem(id="p", prompt="Problem 1 answer=42"))
            ids = tuple(b.encode(prompt))
            s = Sampling(n=3, max_tokens=200, stop=("\n\n",), seed=5, logprobs=True)
            result = await b.agenerate(GenerateRequest(prompt, ids, s))
            return result, [b.decode(g.token_ids) for g in result.generations]

        cfg = _config(srv, prompt_token_ids=prompt_token_ids)
        result, decoded = _run(_with_backend(cfg, go))
    assert srv.bodies and all(body["return_token_ids"] for body in srv.bodies)
    for g, text in zip(result.generations, decoded, strict=True):
        assert g.finish_reason == "stop" and g.stop_reason == "\n\n"
        assert g.text.startswith("Step 1: ") and g.text.endswith(".\n\n")
        assert text == g.text  # the ids spell the text: no "S" of the next step
        assert g.token_ids[0] == 1002  # the server's own ids kept ("Step" is one)
        assert g.token_ids[-2:] == (ord("\n"), ord("\n"))  # "\nS" cut to its head
        assert g.logprobs is not None and len(g.logprobs) == len(g.token_ids)
    assert result.usage.completion_tokens == sum(len(g.token_ids) for g in result.generations)


def test_token_id_prompts_when_configured(server: FakeServer) -> None:
    server.plan = lambda body: []

    async def go(b: OpenAIBackend) -> Any:
        ids = tuple(ord(c) for c in "x answer=7\n" + PROMPT_END)
        req = GenerateRequest("ignored text", ids, Sampling(max_tokens=50, stop=("\n\n",)))
        return await b.agenerate(req)

    result = _run(_with_backend(_config(server, prompt_token_ids=True), go))
    assert isinstance(server.bodies[0]["prompt"], list)
    assert result.generations[0].text.startswith("Step 1")
    # prompt_token_ids=false: text, whatever the tokenizer
    _run(_with_backend(_config(server, prompt_token_ids=False), go))
    assert server.bodies[-1]["prompt"] == "ignored text"


def test_failures_are_retried_counted_and_logged(
    server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.plan = lambda body: ["429", "500", "timeout"]
    caplog.set_level(logging.INFO, logger="ttc.backends.openai")  # retries are detail (info)

    async def go(b: OpenAIBackend) -> Any:
        req = GenerateRequest("Problem answer=3\n" + PROMPT_END, None, Sampling(max_tokens=40))
        result = await b.agenerate(req)
        return result, b.stats.as_dict()

    result, stats = _run(_with_backend(_config(server), go))
    assert result.generations[0].text
    assert stats["failures"] == {"http_429": 1, "http_500": 1, "timeout": 1}
    assert stats["retries"] == 3 and stats["gave_up"] == 0
    logged = caplog.text
    assert "http_429" in logged and "http_500" in logged and "timeout" in logged


def test_a_request_that_keeps_failing_surfaces_as_backend_error(server: FakeServer) -> None:
    async def go(b: OpenAIBackend) -> Any:
        req = GenerateRequest("always-500", None, Sampling(max_tokens=10))
        with pytest.raises(BackendError, match=r"after 3 attempts.*HTTP 500") as info:
            await b.agenerate(req)
        return info.value, b.stats.as_dict()

    err, stats = _run(_with_backend(_config(server, max_attempts=3), go))
    assert err.hint
    assert stats["failures"] == {"http_500": 3} and stats["gave_up"] == 1


def test_client_errors_are_not_retried() -> None:
    with FakeServer(openai_style=True) as srv:

        async def go(b: OpenAIBackend) -> Any:
            with pytest.raises(BackendError, match="HTTP 400"):
                await b.agenerate(GenerateRequest("x", None, Sampling(max_tokens=5)))
            return b.stats.as_dict()

        stats = _run(_with_backend(_config(srv), go))
    assert stats["attempts"] == 2  # GET /models, then one POST: a 400 is final
    assert stats["failures"] == {"http_400": 1}


def test_hosted_api_style_server_without_extensions() -> None:
    """No /tokenize, no token ids, trimmed stop strings: the backend falls back to byte
    ids, puts the stop string back when the text shows which one matched, and cannot tell
    a trimmed stop from an end of sequence otherwise."""
    with FakeServer(openai_style=True) as srv:
        srv.plan = lambda body: []

        async def go(b: OpenAIBackend) -> Any:
            assert b.codec_kind == "bytes"
            prompt = b.render(Problem(id="p", prompt="Problem answer=9\n" + PROMPT_END))
            req = GenerateRequest(prompt, None, Sampling(n=2, max_tokens=100, stop=("\n\n",)))
            return await b.agenerate(req)

        result = _run(_with_backend(_config(srv, extensions=False), go))
    body = srv.bodies[0]
    assert "include_stop_str_in_output" not in body and "return_token_ids" not in body
    for g in result.generations:
        assert g.text.startswith("Step 1") and not g.text.endswith("\n\n")
        assert g.finish_reason == "eos"  # documented: a trimmed stop reads as the end
        assert bytes(g.token_ids).decode() == g.text


def _many_at_once(srv: FakeServer, count: int, **config: Any) -> RequestStats:
    """`count` completions sent together through a backend of `config`; its stats."""

    async def go(b: OpenAIBackend) -> Any:
        reqs = [
            GenerateRequest(f"p{i} answer=1\n" + PROMPT_END, None, Sampling(max_tokens=20))
            for i in range(count)
        ]
        await asyncio.gather(*(b.agenerate(r) for r in reqs))
        return b.stats

    srv.plan = lambda body: []
    return _run(_with_backend(_config(srv, **config), go))  # type: ignore[no-any-return]


def test_concurrency_is_bounded_by_the_semaphore() -> None:
    with FakeServer(delay_s=0.05) as srv:
        stats = _many_at_once(srv, 20, max_concurrency=3)
    assert srv.max_inflight == 3 and stats.max_inflight == 3
    # 20 requests, 3 at a time: the time-weighted mean in flight is close to 3, never above
    assert 2.0 < stats.inflight_s / stats.busy_s <= 3.0 + 1e-9


def test_every_connection_of_a_large_pool_is_used_at_once() -> None:
    """The backend spreads `max_concurrency` connections over several small httpx
    clients (one large pool costs CPU per request); all of them still carry requests at
    the same time, and never more."""
    with FakeServer(delay_s=0.3) as srv:
        _many_at_once(srv, 120, max_concurrency=45, timeout_s=10.0)
    assert srv.max_inflight == 45


def _overrides(srv: FakeServer, store_url: str, *extra: str) -> list[str]:
    return [
        "backend=openai",
        f"backend.base_url={srv.base_url}",
        "backend.api_key_env=TTC_TEST_OPENAI_KEY",
        "backend.timeout_s=0.3",
        "backend.backoff_base_s=0.01",
        "backend.backoff_max_s=0.05",
        "backend.max_attempts=4",
        "task=synthetic",
        "reward=synthetic",
        "run.progress=false",
        f"store.url={store_url}",
        *extra,
    ]


def test_a_run_completes_through_injected_failures_and_never_stores_the_key(
    server: FakeServer,
    store_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("TTC_TEST_OPENAI_KEY", SECRET)
    caplog.set_level(logging.INFO, logger="ttc.backends.openai")  # retries are detail (info)
    cfg = compose(
        _overrides(
            server,
            store_url,
            "strategy=beam_search",
            "strategy.beam_width=2",
            "strategy.expansions=2",
            "task.n_problems=8",
            "run.concurrency=8",
        )
    )
    outcome = Runner(cfg).run()
    assert outcome.status == "finished"
    store = Store(store_url)
    results = store.results(outcome.run_id)
    assert len(results) == 8 and all(r["status"] == "ok" for r in results)
    assert sum(bool(r["correct"]) for r in results) >= 4
    calls = store.calls(outcome.run_id)
    assert calls and all(c["status"] == "ok" for c in calls)
    assert sum(c["cached_prompt_tokens"] for c in calls) > 0  # the server's usage, recorded
    # every kind of failure happened, was retried and was logged
    assert {"429", "500", "timeout"} <= set(server.injected)
    for kind in ("http_429", "http_500", "timeout"):
        assert kind in caplog.text
    # problems ran concurrently: their requests reached the server together
    assert server.max_inflight > 1
    # the key was sent, and is nowhere in what was stored
    assert server.auth == {f"Bearer {SECRET}"}
    config = store.get_run(outcome.run_id)["config"]
    assert config["backend"]["api_key_env"] == "TTC_TEST_OPENAI_KEY"
    assert SECRET not in json.dumps(config)
    db = Path(store_url.removeprefix("sqlite:///"))
    assert SECRET.encode() not in db.read_bytes()


def test_the_key_cannot_be_put_in_the_config(server: FakeServer, store_url: str) -> None:
    with pytest.raises(ConfigError, match="api_key"):
        Runner(compose(_overrides(server, store_url, f"backend.api_key={SECRET}"))).run()


@pytest.mark.parametrize("unit", ["flops", "eflops"])
def test_a_flops_limit_without_the_models_shape_fails_at_start_naming_the_fix(
    server: FakeServer, store_url: str, unit: str
) -> None:
    cfg = compose(_overrides(server, store_url, f"budget.{unit}=1e12", "task.n_problems=2"))
    with pytest.raises(ConfigError, match=r"backend\.tokenizer") as info:
        Runner(cfg).run()
    assert "\n" not in str(info.value) and f"budget.{unit}" in str(info.value)
    assert server.served == 0  # refused before any problem was solved


def test_judge_on_the_openai_backend_ranks_the_right_sample_first(
    server: FakeServer, store_url: str
) -> None:
    """best-of-4 ranked by the judge, the judge's questions answered by the server: the
    chosen answer is right wherever some sample is, and the scores are the server's."""
    cfg = compose(
        _overrides(
            server,
            store_url,
            "strategy=best_of_n",
            "strategy.n=4",
            "reward=judge",
            "reward.mode=solution",
            "task.n_problems=8",
        )
    )
    outcome = Runner(cfg).run()
    assert outcome.status == "finished"
    store = Store(store_url)
    results = store.results(outcome.run_id)
    assert len(results) == 8 and all(r["status"] == "ok" for r in results)
    assert server.judged > 0
    for r in results:
        assert r["correct"] == r["oracle_correct"], r["problem_id"]
        leaves = [n for n in store.nodes(outcome.run_id, r["problem_id"]) if n["node_id"]]
        values = [n["score"] for n in leaves]
        assert all(v is not None for v in values)
        # P(Yes) / (P(Yes) + P(No)) as the server gave it: ~0.8+ right, ~0.25 wrong
        assert all(v > 0.78 or v < 0.36 for v in values)
    # the judge beat picking a sample at random (what scores of 0 would leave)
    assert sum(bool(r["correct"]) for r in results) > sum(r["pass_at_1"] for r in results)
    scores = [c for c in store.calls(outcome.run_id) if c["kind"] == "score"]
    assert scores and all(c["status"] == "ok" and c["reward_tokens"] > 0 for c in scores)
