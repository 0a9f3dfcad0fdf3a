"""Cancellation through the openai backend against the in-test HTTP server: a call that
carries an `Abort` is streamed; stopping it closes the connection (the server sees the
disconnect and generates nothing more), and only the tokens received are charged."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from test_openai import FakeServer, _config, _overrides, _run, _with_backend

from ttc.backends.openai import OpenAIBackend
from ttc.cancel import Abort, SequenceProgress
from ttc.launch import compose
from ttc.runner import Runner
from ttc.store import Store
from ttc.testing import PROMPT_END
from ttc.types import GenerateRequest, Sampling


@pytest.fixture
def server() -> Any:
    with FakeServer() as srv:
        srv.plan = lambda body: []
        srv.stream_delay_s = 0.01
        yield srv


def _wait_for(cond: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return bool(cond())


def _request(abort: Abort, **sampling: Any) -> GenerateRequest:
    s = Sampling(max_tokens=400, seed=3, **sampling)
    return GenerateRequest(f"q answer=7\n{PROMPT_END}", None, s, abort=abort)


def test_a_watch_stops_the_sequence_and_the_server_sees_the_disconnect(
    server: FakeServer,
) -> None:
    abort = Abort(watch=lambda p: p.tokens >= 5)

    async def go(b: OpenAIBackend) -> Any:
        return await b.agenerate(_request(abort))

    result = _run(_with_backend(_config(server, timeout_s=10.0), go))
    (g,) = result.generations
    assert g.finish_reason == "cancelled" and len(g.token_ids) == 5 and len(g.text) == 5
    assert result.usage.completion_tokens == 5  # what was received, not the whole trace
    assert result.usage.prompt_tokens > 0  # the prompt was prefilled
    assert abort.stopped == 1
    assert _wait_for(lambda: server.disconnects == 1)
    assert server.unsent_tokens > 20  # the rest of the trace was never generated


def test_setting_the_abort_stops_every_sequence_of_a_running_call(server: FakeServer) -> None:
    seen = asyncio.Event()

    def first_token(p: SequenceProgress) -> bool:
        seen.set()
        return False

    abort = Abort(watch=first_token)

    async def go(b: OpenAIBackend) -> Any:
        call = asyncio.ensure_future(b.agenerate(_request(abort, n=3)))
        await seen.wait()
        await asyncio.sleep(0.05)
        abort.set()
        return await call

    result = _run(_with_backend(_config(server, timeout_s=10.0), go))
    assert [g.finish_reason for g in result.generations] == ["cancelled"] * 3
    received = sum(len(g.token_ids) for g in result.generations)
    assert 0 < received < 3 * 30
    assert result.usage.completion_tokens == received
    assert _wait_for(lambda: server.disconnects == 1)


def test_an_abort_set_before_the_call_sends_nothing_and_charges_nothing(
    server: FakeServer,
) -> None:
    abort = Abort()
    abort.set()

    async def go(b: OpenAIBackend) -> Any:
        return await b.agenerate(_request(abort, n=2))

    result = _run(_with_backend(_config(server, timeout_s=10.0), go))
    assert [g.finish_reason for g in result.generations] == ["cancelled"] * 2
    assert result.usage.prompt_tokens == 0 and result.usage.completion_tokens == 0
    assert server.streams == 0


def test_a_stream_that_is_not_stopped_equals_the_plain_call(server: FakeServer) -> None:
    async def go(b: OpenAIBackend) -> Any:
        plain = await b.agenerate(_request(None, n=2, logprobs=True))  # type: ignore[arg-type]
        streamed = await b.agenerate(_request(Abort(), n=2, logprobs=True))
        return plain, streamed

    server.stream_delay_s = 0.0
    plain, streamed = _run(_with_backend(_config(server, timeout_s=10.0), go))
    assert streamed.generations == plain.generations
    assert streamed.usage.completion_tokens == plain.usage.completion_tokens
    assert streamed.usage.prompt_tokens == plain.usage.prompt_tokens
    # the prompt was seen before: cached, as the stream's last chunk reports it
    assert plain.usage.cached_prompt_tokens == 0
    assert streamed.usage.cached_prompt_tokens == streamed.usage.prompt_tokens


def _run_overrides(server: FakeServer, store_url: str, *extra: str) -> list[str]:
    """`_overrides` with a read timeout that a loaded machine's stalls stay under (the
    streams here pause between tokens; a stream that fails after its first token is not
    retried)."""
    base = [o for o in _overrides(server, store_url) if not o.startswith("backend.timeout_s")]
    return [*base, "backend.timeout_s=10", *extra]


def _spent_tokens_match_the_tree(store: Store, run_id: str) -> int:
    """Every problem's charged tokens are the tokens of its branches, cancelled ones
    included; returns how many branches were cancelled."""
    cancelled = 0
    for r in store.results(run_id):
        nodes = store.nodes(run_id, r["problem_id"])
        calls = store.calls(run_id, r["problem_id"])
        generated = sum(n["n_tokens"] or 0 for n in nodes)
        charged = sum(c["completion_tokens"] for c in calls if c["kind"] == "generate")
        assert charged == generated, r["problem_id"]
        cancelled += sum(n["finish_reason"] == "cancelled" for n in nodes)
    return cancelled


def test_adaptive_consistency_aborts_the_samples_it_no_longer_needs(
    server: FakeServer, store_url: str, tmp_path: Path
) -> None:
    server.stream_delay_s = 0.004
    cfg = compose(
        _run_overrides(
            server,
            store_url,
            "strategy=adaptive_consistency",
            "strategy.batch=6",
            "strategy.criterion=majority",
            "strategy.threshold=0.6",
            "strategy.max_tokens=400",
            "reward=none",
            "task.n_problems=6",
        )
    )
    outcome = Runner(cfg).run()
    assert outcome.status == "finished"
    store = Store(store_url)
    results = store.results(outcome.run_id)
    assert all(r["status"] == "ok" for r in results)
    cancelled = _spent_tokens_match_the_tree(store, outcome.run_id)
    assert cancelled > 0
    assert _wait_for(lambda: server.disconnects >= cancelled // 2)
    assert server.unsent_tokens > 0


def test_deepconf_stops_unsure_traces_mid_generation(server: FakeServer, store_url: str) -> None:
    """Unsure traces (mostly the wrong ones, by the server's logprobs) are stopped after
    a window below the warm-up threshold: the server sees the disconnects, the tokens
    they had are charged, and the confidence-weighted vote beats a random sample."""
    server.stream_delay_s = 0.002
    cfg = compose(
        _run_overrides(
            server,
            store_url,
            "strategy=deepconf",
            "strategy.warmup=4",
            "strategy.max_samples=10",
            "strategy.keep=0.5",
            "strategy.window=8",
            "strategy.batch=3",
            "strategy.max_tokens=400",
            "reward=none",
            "task.n_problems=8",
        )
    )
    outcome = Runner(cfg).run()
    assert outcome.status == "finished"
    store = Store(store_url)
    results = store.results(outcome.run_id)
    assert all(r["status"] == "ok" for r in results)
    _spent_tokens_match_the_tree(store, outcome.run_id)
    stopped_mid_way = 0
    for r in results:
        for n in store.nodes(outcome.run_id, r["problem_id"]):
            if n["finish_reason"] == "cancelled" and n["n_tokens"]:
                assert n["n_tokens"] >= 8 or r["trace"]["ended_by"] == "consensus"
                stopped_mid_way += 1
    assert stopped_mid_way > 0
    assert _wait_for(lambda: server.disconnects > 0)
    correct = sum(bool(r["correct"]) for r in results)
    assert correct >= sum(r["pass_at_1"] for r in results)
