"""The hf backend decoding with shared-prefix (cascade) attention equals plain decoding.

On CPU `backend.attention=cascade` runs `ttc.kernels.attention`'s reference, and with
`backend.kernels=triton` its Triton kernel in the interpreter (tests/conftest.py sets
TRITON_INTERPRET=1): the same decode loop a CUDA device runs with the compiled kernel.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_hf import _build_model_dir  # noqa: E402

from ttc.backends.hf import HFBackend, HFBackendConfig, PrefixCache  # noqa: E402
from ttc.errors import BackendError  # noqa: E402
from ttc.types import GenerateRequest, Sampling  # noqa: E402

PROMPTS = ["the cat sat", "one two three four", "alpha beta"]


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> HFBackend:
    path = _build_model_dir(tmp_path_factory.mktemp("tiny-llama"), with_bos=False, chat=True)
    b = HFBackend(HFBackendConfig(model=str(path), device="cpu"))
    asyncio.run(b.start())
    return b


def _requests(backend: HFBackend) -> list[GenerateRequest]:
    ids = [tuple(backend.encode(p)) for p in PROMPTS]

    def req(i: int, **sampling: Any) -> GenerateRequest:
        return GenerateRequest(prompt="", prompt_token_ids=ids[i], sampling=Sampling(**sampling))

    return [
        req(0, n=3, temperature=0.0, max_tokens=9, logprobs=True),
        req(1, n=2, temperature=1.0, seed=5, max_tokens=4, logprobs=True),  # finishes first
        req(0, n=2, temperature=0.8, top_k=20, seed=9, max_tokens=7),  # prompt 0 again
        req(2, n=1, temperature=1.0, top_p=0.9, seed=1, max_tokens=11),
    ]


def _run(backend: HFBackend, attention: str, kernels: str = "auto") -> list[Any]:
    backend.config.attention, backend.config.kernels = attention, kernels
    backend.prefix_cache = PrefixCache(backend.config.prefix_cache_tokens)
    try:
        return backend.generate_batch(_requests(backend))
    finally:
        backend.config.attention, backend.config.kernels = "auto", "auto"


def _assert_same(plain: list[Any], cascade: list[Any]) -> None:
    for p, c in zip(plain, cascade, strict=True):
        assert [g.token_ids for g in c.generations] == [g.token_ids for g in p.generations]
        for gp, gc in zip(p.generations, c.generations, strict=True):
            if gp.logprobs is not None:
                assert gc.logprobs == pytest.approx(gp.logprobs, abs=1e-4)
        assert c.usage.prompt_tokens == p.usage.prompt_tokens
        assert c.usage.cached_prompt_tokens == p.usage.cached_prompt_tokens


def test_cascade_decoding_generates_what_plain_decoding_does(backend: HFBackend) -> None:
    _assert_same(_run(backend, "plain"), _run(backend, "cascade", "reference"))


def test_cascade_through_the_triton_kernel_generates_the_same(
    backend: HFBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ttc.kernels import attention, sampling

    # The attention kernel runs (interpreted); sampling keeps the reference, whose
    # token for a given uniform the test compares (the kernel sampler draws from the
    # same distribution but may map a uniform to another token).
    calls: list[int] = []
    kernel, sample = attention.triton_cascade, sampling.sample

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return kernel(*args, **kwargs)

    monkeypatch.setattr(attention, "triton_cascade", counted)
    monkeypatch.setattr(
        sampling, "sample", lambda *a, **k: sample(*a, **{**k, "impl": "reference"})
    )
    plain = _run(backend, "plain")
    _assert_same(plain, _run(backend, "cascade", "triton"))
    assert calls, "the Triton attention kernel did not run"


def test_finished_branches_enter_the_prefix_cache_alike(backend: HFBackend) -> None:
    held = {}
    for attention in ("plain", "cascade"):
        _run(backend, attention)
        held[attention] = dict(backend.prefix_cache._entries)
    assert held["plain"].keys() == held["cascade"].keys() and held["plain"]
    for key, entry in held["plain"].items():
        other = held["cascade"][key].kv
        for (k, v), (k2, v2) in zip(entry.kv, other, strict=True):
            assert k.shape == k2.shape
            torch.testing.assert_close(k2, k, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(v2, v, atol=1e-5, rtol=1e-5)


def test_cascade_refuses_a_model_with_sliding_windows(backend: HFBackend) -> None:
    text_cfg = backend._require().model.config.get_text_config()
    backend.config.attention = "cascade"
    text_cfg.sliding_window = 4
    try:
        with pytest.raises(BackendError, match="attention=cascade needs a model"):
            backend.generate_batch(_requests(backend)[:1])
    finally:
        text_cfg.sliding_window = None
        backend.config.attention = "auto"


def test_auto_keeps_plain_attention_on_cpu(backend: HFBackend) -> None:
    assert backend._cascade(backend._require()) is False
