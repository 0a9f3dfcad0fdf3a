"""The FastAPI app: OpenAI's `/v1/chat/completions`, `/v1/completions` and `/v1/models`
in front of a `ServingRun`.

The response's content is the strategy's chosen solution; `usage` reports what the
search really spent (completion tokens over every sample, prompt tokens, cached ones) and
a `ttc` field with the rest of the ledger and where the request is stored. With
`stream: true` the final answer is sent as standard SSE chunks once the search ends
(search progress is not streamed: OpenAI's protocol has no event for it).
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ttc.errors import TtcError
from ttc.serve.config import ServeConfig
from ttc.serve.plan import RequestError
from ttc.serve.run import Answer, NotStored, ServingRun, Unavailable, new_problem_id
from ttc.types import Problem


def error_response(
    status: int, message: str, *, kind: str = "invalid_request_error", param: str | None = None
) -> JSONResponse:
    """OpenAI's error body (the `openai` client raises it as `APIStatusError.message`)."""
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": None}},
        status_code=status,
    )


def usage_of(answer: Answer) -> dict[str, Any]:
    sp = answer.spent
    prompt = int(sp.get("prompt_tokens", 0))
    completion = int(sp.get("tokens", 0))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": int(sp.get("cached_prompt_tokens", 0))},
        "ttc": {
            "run_id": answer.run_id,
            "problem_id": answer.problem_id,
            "strategy": answer.strategy,
            "params": answer.plan.params,
            "answer": answer.answer,
            "samples": int(sp.get("samples", 0)),
            "reward_calls": int(sp.get("reward_calls", 0)),
            "reward_tokens": int(sp.get("reward_tokens", 0)),
            "prefill_tokens": int(sp.get("prefill_tokens", 0)),
            "generate_calls": int(sp.get("generate_calls", 0)),
            "refused_calls": int(sp.get("refused_calls", 0)),
            "flops": float(sp.get("flops", 0.0)),
            "eflops": float(sp.get("eflops", 0.0)),
            "seconds": float(sp.get("seconds", 0.0)),
            "budget": answer.plan.budget.limits(),
        },
    }


def chat_problem(body: dict[str, Any], pid: str) -> Problem:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list of {role, content}", key="messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise RequestError(f"messages[{i}] must be an object with a role", key="messages")
        out.append({"role": m["role"], "content": _text(m.get("content"), f"messages[{i}]")})
    return Problem(
        id=pid,
        messages=tuple(out),
        # what a base model without a chat template reads (the turns as paragraphs)
        prompt="\n\n".join(m["content"] for m in out),
        metadata={"endpoint": "chat.completions"},
    )


def completion_problem(body: dict[str, Any], pid: str) -> Problem:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise RequestError(
            "prompt must be one string (send one request per prompt: each is one search)",
            key="prompt",
        )
    # the prompt as it stands, as OpenAI-compatible servers take it: no chat template
    return Problem(id=pid, prompt=prompt, metadata={"endpoint": "completions"}, raw=True)


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                parts.append(str(part.get("text", "")))
            else:
                raise RequestError(f"{where}.content: only text parts are supported", key=where)
        return "".join(parts)
    if content is None:
        return ""
    raise RequestError(f"{where}.content must be a string or a list of text parts", key=where)


class Guard:
    """The checks before a request reaches its endpoint: the bearer key (401), a draining
    server (503), the declared body size (413). Plain ASGI: Starlette's
    `BaseHTTPMiddleware` would put a task group and a cancellation around every request,
    a measurable part of the gateway's overhead."""

    def __init__(
        self, app: ASGIApp, *, run: ServingRun, serve: ServeConfig, keys: frozenset[str] | None
    ) -> None:
        self.app = app
        self.run = run
        self.serve = serve
        self.keys = [k.encode() for k in keys] if keys is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self.refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> Response | None:
        headers = {k.lower(): v for k, v in scope.get("headers", ())}
        if self.keys is not None and str(scope.get("path", "")).startswith("/v1/"):
            scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not any(
                hmac.compare_digest(token.strip(), k) for k in self.keys
            ):
                return error_response(
                    401,
                    "missing or invalid API key: send `Authorization: Bearer <key>`",
                    kind="authentication_error",
                )
        if self.run.draining:
            return error_response(503, "the server is shutting down", kind="server_error")
        length = headers.get(b"content-length", b"")
        limit = self.serve.max_request_bytes
        if length.isdigit() and int(length) > limit:
            return error_response(413, f"request body over {limit} bytes (serve.max_request_bytes)")
        return None


def create_app(
    run: ServingRun, serve: ServeConfig, *, keys: frozenset[str] | None = None
) -> FastAPI:
    """The gateway's ASGI app; its lifespan starts the serving run and closes it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await run.start()
        except TtcError as exc:
            # e.g. a model that cannot be loaded: kept for the caller to report in one
            # line, and the server asked to stop (`app.state.stop`) instead of a traceback
            run.startup_error = exc
            stop = getattr(app.state, "stop", None)
            if stop is None:
                raise
            stop()
        try:
            yield
        finally:
            await run.close()

    app = FastAPI(title="ttc serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.run = run

    app.add_middleware(Guard, run=run, serve=serve, keys=keys)

    async def body_of(request: Request) -> dict[str, Any]:
        raw = await request.body()
        if len(raw) > serve.max_request_bytes:
            raise RequestError(
                f"request body over {serve.max_request_bytes} bytes (serve.max_request_bytes)",
                status=413,
            )
        try:
            body = json.loads(raw)
        except ValueError:
            raise RequestError("the request body is not JSON") from None
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        return body

    async def answer(request: Request, endpoint: str) -> Response:
        try:
            body = await body_of(request)
            pid = new_problem_id()
            if endpoint == "chat":
                problem = chat_problem(body, pid)
            else:
                problem = completion_problem(body, pid)
            plan = run.plan(body)
            result = await run.solve(plan, problem)
        except RequestError as exc:
            return error_response(exc.status, exc.message, param=exc.key)
        except Unavailable as exc:
            return error_response(503, str(exc), kind="server_error")
        except NotStored as exc:
            return error_response(500, str(exc), kind="server_error")
        if result.status != "ok":
            last = (result.error or "").strip().splitlines()
            return error_response(
                500,
                f"the search failed (stored as problem {result.problem_id} of run "
                f"{result.run_id}): {last[-1] if last else 'unknown error'}",
                kind="server_error",
            )
        model = body.get("model") if isinstance(body.get("model"), str) else None
        model = model or f"{serve.model_prefix}/{result.plan.strategy}"
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(
                sse(endpoint, result, model, include_usage=include_usage),
                media_type="text/event-stream",
            )
        return JSONResponse(completion_body(endpoint, result, model))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await answer(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await answer(request, "completions")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        names = run.planner.strategies if run.planner is not None else []
        prefix = serve.model_prefix
        return {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": 0, "owned_by": "ttc"}
                for m in [prefix, *(f"{prefix}/{s}" for s in names)]
            ],
        }

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "run_id": run.run_id, "inflight": run.inflight}

    return app


def completion_body(endpoint: str, result: Answer, model: str) -> dict[str, Any]:
    created = int(time.time())
    if endpoint == "chat":
        return {
            "id": f"chatcmpl-{result.problem_id}",
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.text},
                    "finish_reason": result.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": usage_of(result),
        }
    return {
        "id": f"cmpl-{result.problem_id}",
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "text": result.text,
                "finish_reason": result.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": usage_of(result),
    }


async def sse(
    endpoint: str, result: Answer, model: str, *, include_usage: bool
) -> AsyncIterator[bytes]:
    """The finished answer as OpenAI's stream chunks: the text in one chunk, then the
    finish reason, then (when asked) the usage, then `[DONE]`."""
    created = int(time.time())
    if endpoint == "chat":
        base = {
            "id": f"chatcmpl-{result.problem_id}",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
        }
        chunks = [
            {"index": 0, "delta": {"role": "assistant", "content": result.text}},
            {"index": 0, "delta": {}, "finish_reason": result.finish_reason},
        ]
    else:
        base = {
            "id": f"cmpl-{result.problem_id}",
            "object": "text_completion",
            "created": created,
            "model": model,
        }
        chunks = [
            {"index": 0, "text": result.text, "finish_reason": None},
            {"index": 0, "text": "", "finish_reason": result.finish_reason},
        ]
    for choice in chunks:
        yield _event({**base, "choices": [choice]})
    if include_usage:
        yield _event({**base, "choices": [], "usage": usage_of(result)})
    yield b"data: [DONE]\n\n"


def _event(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()
