"""Reward models: each PRM family on a tiny random model with its tokenizer conventions
(tokenizers built in-test, offline), incremental scoring, batching, ORM, judge, rule,
oracle and self-certainty."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ttc.interfaces import Backend
from ttc.plugins.rewards.judge import Judge, JudgeConfig
from ttc.plugins.rewards.oracle import OracleReward, OracleRewardConfig
from ttc.plugins.rewards.prm import PRMConfig, ProcessRewardModel
from ttc.plugins.rewards.rule import RuleReward, RuleRewardConfig
from ttc.plugins.rewards.self_certainty import (
    SelfCertainty,
    SelfCertaintyConfig,
    lowest_window_mean,
    step_confidence,
)
from ttc.plugins.tasks.arith import ArithTask, ArithTaskConfig
from ttc.types import GenerateResult, Generation, Problem, ScoreRequest, Usage

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

QUESTION = "What is 3 times 4 and then 5 more?"
STEPS = ("Step 1: 3 times 4 is 12.\n\n", "Step 2: 12 and 5 more is 17.\n\n", "The answer is 17.")
CORPUS = [QUESTION, *STEPS, "Please reason step by step", "user assistant system"] * 20

QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA3_TEMPLATE = (
    "<|begin_of_text|>{% for m in messages %}<|start_header_id|>{{ m['role'] }}"
    "<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def tiny_tokenizer(specials: list[str], *, template: str | None = None, bos: str | None = None):
    """A byte-level BPE tokenizer trained on a few sentences (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", *specials],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token=bos)
    if template is not None:
        fast.chat_template = template
    return fast


def tiny_config(kind: str, vocab: int) -> Any:
    cls = getattr(transformers, f"{kind}Config")
    return cls(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=0,
    )


def make_prm(family: str, tmp_path: Path, **cfg: Any) -> tuple[ProcessRewardModel, Any, Any]:
    torch.manual_seed(0)
    if family == "qwen":
        tok = tiny_tokenizer(["<extra_0>", "<|im_start|>", "<|im_end|>"], template=QWEN_TEMPLATE)
        config = tiny_config("Qwen2", len(tok))
        config.num_labels = 2
        model = transformers.Qwen2ForTokenClassification(config)
        model_dir = None
    elif family == "math_shepherd":
        tok = tiny_tokenizer(["ки", "<s>"], bos="<s>")
        model = transformers.LlamaForCausalLM(tiny_config("Llama", len(tok)))
        model_dir = None
    elif family == "rlhflow":
        specials = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
        tok = tiny_tokenizer(specials, template=LLAMA3_TEMPLATE)
        model = transformers.LlamaForCausalLM(tiny_config("Llama", len(tok)))
        model_dir = None
    else:  # skywork: a base model plus a value head stored beside it in the checkpoint
        from safetensors.torch import save_file

        tok = tiny_tokenizer(["<|endoftext|>"], bos="<|endoftext|>")
        model = transformers.Qwen2Model(tiny_config("Qwen2", len(tok)))
        model_dir = tmp_path / "skywork"
        model_dir.mkdir()
        save_file(
            {"v_head.summary.weight": torch.randn(1, 32), "v_head.summary.bias": torch.randn(1)},
            str(model_dir / "value_head.safetensors"),
        )
    model.eval()
    prm = ProcessRewardModel(PRMConfig(family=family, **cfg))
    prm.attach(model, tok, model_dir=model_dir)
    return prm, model, tok


def request(steps: tuple[str, ...], scored: int = 0) -> ScoreRequest:
    problem = Problem(id="p", prompt=QUESTION)
    return ScoreRequest(problem=problem, prompt="", steps=steps, scored_steps=scored)


def expected_scores(family: str, model: Any, tok: Any, ids: list[int]) -> list[float]:
    """Scores read straight off one uncached forward of the whole sequence, at the
    positions and class each family's model card uses."""
    x = torch.tensor([ids])
    with torch.no_grad():
        if family == "qwen":
            probs = torch.softmax(model(input_ids=x).logits[0], -1)[:, 1]
            sep = tok.convert_tokens_to_ids("<extra_0>")
            return [float(probs[i]) for i, t in enumerate(ids) if t == sep]
        logits = model(input_ids=x).logits[0]
        plus, minus = tok.convert_tokens_to_ids("+"), tok.convert_tokens_to_ids("-")
        if family == "math_shepherd":
            tag = tok.convert_tokens_to_ids("ки")
            at = [i for i, t in enumerate(ids) if t == tag]
        else:  # rlhflow: the logits just before each assistant "+"
            at = [i - 1 for i, t in enumerate(ids) if t == plus]
        return [float(torch.softmax(logits[i, [plus, minus]], -1)[0]) for i in at]


@pytest.mark.parametrize("family", ["qwen", "math_shepherd", "rlhflow"])
def test_prm_family_reads_its_scores_at_the_right_positions(family: str, tmp_path: Path) -> None:
    prm, model, tok = make_prm(family, tmp_path)
    (result,) = prm.score_batch([request(STEPS)])
    lay = prm.layout(request(STEPS))
    assert len(result.step_scores) == len(STEPS) == len(lay.positions)
    assert result.tokens == len(lay.ids)
    want = expected_scores(family, model, tok, list(lay.ids))
    assert len(want) == len(STEPS)
    assert result.step_scores == pytest.approx(want, abs=1e-5)


def test_qwen_layout_is_the_chat_the_model_card_builds(tmp_path: Path) -> None:
    prm, _, tok = make_prm("qwen", tmp_path)
    steps = [s.strip() for s in STEPS]
    chat = [
        {"role": "system", "content": prm.config.system_prompt},
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "<extra_0>".join(steps) + "<extra_0>"},
    ]
    full = tok(tok.apply_chat_template(chat, tokenize=False), add_special_tokens=False)
    lay = prm.layout(request(STEPS))
    assert list(full["input_ids"][: len(lay.ids)]) == list(lay.ids)
    sep = tok.convert_tokens_to_ids("<extra_0>")
    assert [lay.ids[p] for p in lay.positions] == [sep] * 3


def test_rlhflow_layout_is_the_conversation_with_plus_answers(tmp_path: Path) -> None:
    prm, _, tok = make_prm("rlhflow", tmp_path)
    steps = [s.strip() for s in STEPS]
    chat: list[dict[str, str]] = []
    for k, s in enumerate(steps):
        chat.append({"role": "user", "content": f"{QUESTION} {s}" if k == 0 else s})
        chat.append({"role": "assistant", "content": "+"})
    full = tok(tok.apply_chat_template(chat, tokenize=False), add_special_tokens=False)
    lay = prm.layout(request(STEPS))
    assert list(lay.ids) == list(full["input_ids"])
    plus = tok.convert_tokens_to_ids("+")
    assert [lay.ids[p + 1] for p in lay.positions] == [plus] * 3


def test_skywork_value_head_sigmoid_at_each_newline(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    prm, model, tok = make_prm("skywork", tmp_path)
    (result,) = prm.score_batch([request(STEPS)])
    lay = prm.layout(request(STEPS))
    newline = tok("\n", add_special_tokens=False)["input_ids"][-1]
    assert lay.ids[0] == tok.convert_tokens_to_ids("<|endoftext|>")  # BOS first
    assert [lay.ids[p] for p in lay.positions] == [newline] * 3
    head = load_file(str(tmp_path / "skywork" / "value_head.safetensors"))
    with torch.no_grad():
        h = model(input_ids=torch.tensor([lay.ids])).last_hidden_state[0]
    w, b = head["v_head.summary.weight"], head["v_head.summary.bias"]
    want = [float(torch.sigmoid(h[p] @ w[0] + b[0])) for p in lay.positions]
    assert result.step_scores == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize("family", ["qwen", "rlhflow"])
def test_incremental_scoring_costs_only_the_new_steps_and_matches_full_scoring(
    family: str, tmp_path: Path
) -> None:
    prm, _, _ = make_prm(family, tmp_path)
    previous = 0
    for k in range(1, len(STEPS) + 1):
        (res,) = prm.score_batch([request(STEPS[:k], scored=k - 1)])
        total = len(prm.layout(request(STEPS[:k])).ids)
        assert res.tokens == total - previous  # only the new step's tokens ran
        previous = total
    fresh, _, _ = make_prm(family, tmp_path / "fresh")
    (full,) = fresh.score_batch([request(STEPS)])
    assert res.step_scores == pytest.approx(full.step_scores, abs=1e-4)
    (again,) = prm.score_batch([request(STEPS, scored=3)])
    assert again.tokens == 0 and again.step_scores == res.step_scores


def test_batched_scoring_of_uneven_branches_equals_scoring_each_alone(tmp_path: Path) -> None:
    reqs = [request(STEPS[:1]), request(STEPS), request(("Step 1: 4 times 3 is 12.",))]
    batched, _, _ = make_prm("math_shepherd", tmp_path, prefix_cache_tokens=0)
    together = batched.score_batch(reqs)
    for r, got in zip(reqs, together, strict=True):
        alone, _, _ = make_prm("math_shepherd", tmp_path / "a", prefix_cache_tokens=0)
        (want,) = alone.score_batch([r])
        assert got.step_scores == pytest.approx(want.step_scores, abs=1e-5)
        assert got.tokens == want.tokens


def test_orm_scores_the_whole_solution_once(tmp_path: Path) -> None:
    from ttc.plugins.rewards.orm import ORMConfig, OutcomeRewardModel

    torch.manual_seed(0)
    tok = tiny_tokenizer(["<|im_start|>", "<|im_end|>"], template=QWEN_TEMPLATE)
    cfg = tiny_config("Qwen2", len(tok))
    cfg.num_labels = 1
    model = transformers.Qwen2ForSequenceClassification(cfg).eval()
    orm = OutcomeRewardModel(ORMConfig())
    orm.attach(model, tok)
    a, b = orm.score_batch([request(STEPS), request(STEPS[:2])])
    assert len(b.step_scores) == 2
    ids = orm.text_ids(QUESTION, "".join(STEPS))
    with torch.no_grad():
        want = float(torch.sigmoid(model(input_ids=torch.tensor([ids])).logits[0, 0]))
    assert a.step_scores[-1] == pytest.approx(want, abs=1e-5)
    assert a.tokens == len(ids) and len(a.step_scores) == 3
    (again,) = orm.score_batch([request(STEPS)])
    assert again.tokens == 0 and again.step_scores[-1] == a.step_scores[-1]


class YesNoBackendDouble(Backend):
    """A judge's policy double (one token per character, batched by the scheduler): a
    one-token question answers Yes with P = 0.8 unless the question mentions 'wrong'
    (then 0.1), as top-k alternatives with a third, unrelated token; a longer request
    writes a verification. Prompts it has seen are prefix-cached, so a question sharing
    its start with an earlier one computes only the rest."""

    name = "yes_no_double"

    def __init__(self) -> None:
        super().__init__(None)
        self.batches: list[int] = []
        self.seen: list[tuple[int, ...]] = []

    def render(self, problem: Problem) -> str:
        return "U: " + problem.messages[-1]["content"] + "\nA:"

    def encode(self, text: str) -> list[int]:
        return [ord(c) % 250 for c in text]

    def decode(self, token_ids: Any) -> str:
        return "".join(chr(t) for t in token_ids)

    def generate_batch(self, requests: Any) -> list[GenerateResult]:
        import math

        self.batches.append(len(requests))
        out = []
        for r in requests:
            ids = tuple(r.prompt_token_ids)
            hit = max((_common(ids, d) for d in self.seen), default=0)
            self.seen.append(ids)
            s = r.sampling
            if s.max_tokens == 1:
                p = 0.1 if "wrong" in r.prompt else 0.8
                top = ((ord("Y"), math.log(p * 0.9)), (ord("N"), math.log((1 - p) * 0.9)))
                top = tuple(sorted((*top, (ord("T"), math.log(0.1))), key=lambda t: -t[1]))
                tok = top[0][0]
                g = Generation(
                    token_ids=(tok,),
                    text=chr(tok),
                    finish_reason="length",
                    logprobs=(top[0][1],),
                    top_logprobs=(top[: s.top_logprobs],),
                )
            else:
                g = Generation(token_ids=(111, 107, 46), text="ok.", finish_reason="eos")
            usage = Usage(prompt_tokens=len(ids), cached_prompt_tokens=min(hit, len(ids) - 1))
            out.append(GenerateResult(generations=(g,), usage=usage))
        return out


def _common(a: Any, b: Any) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def judge_scores(judge: Judge, requests: list[ScoreRequest]) -> list[Any]:
    """Score through a scheduler, as a run does (the judge asks the policy through it)."""
    import asyncio

    from ttc.scheduler import Scheduler

    async def go() -> list[Any]:
        scheduler = Scheduler(judge.backend, judge, max_wait_s=0.0)
        outcomes = await scheduler.score(requests)
        return [o.result for o in outcomes]  # type: ignore[union-attr]

    return asyncio.run(go())


def test_judge_step_mode_reads_p_yes_and_scores_only_new_steps() -> None:
    backend = YesNoBackendDouble()
    judge = Judge(JudgeConfig(yes_words=["Y"], no_words=["N"], top_logprobs=3), backend=backend)
    steps = ("Step 1: right.", "Step 2: wrong.")
    (first,) = judge_scores(judge, [request(steps[:1])])
    assert first.step_scores == pytest.approx([0.8]) and first.tokens > 0
    (second,) = judge_scores(judge, [request(steps, scored=1)])
    assert second.step_scores == pytest.approx([0.8, 0.1])
    assert backend.batches == [1, 1]  # the first step was not asked again
    # the second question shares its start with the first: only the rest is computed
    (p,) = second.passes
    assert p.cached > 0 and second.tokens == p.prompt - p.cached < p.prompt


def test_judge_without_yes_or_no_among_the_alternatives_scores_one_half() -> None:
    backend = YesNoBackendDouble()
    judge = Judge(JudgeConfig(yes_words=["Y"], no_words=["N"], top_logprobs=1), backend=backend)
    # only the top token comes back: 'Y' (0.72) for a right step, 'N' (0.81) for a wrong one
    right, wrong = judge_scores(judge, [request(("Step 1: right.",)), request(("wrong",))])
    assert right.step_scores == (1.0,) and wrong.step_scores == (0.0,)
    judge = Judge(JudgeConfig(yes_words=["Q"], no_words=["Z"], top_logprobs=3), backend=backend)
    (res,) = judge_scores(judge, [request(("Step 1: right.",))])
    assert res.step_scores == (0.5,)


def test_judge_worst_case_bounds_what_a_call_computes() -> None:
    backend = YesNoBackendDouble()
    judge = Judge(JudgeConfig(yes_words=["Y"], no_words=["N"], mode="generative"), backend=backend)
    finished = ScoreRequest(
        problem=Problem(id="p", prompt=QUESTION), prompt="", steps=STEPS, finished=True
    )
    requests = [request(STEPS[:1]), request(STEPS[:2], scored=1), finished]
    worst = judge.worst_case(requests)
    results = judge_scores(judge, requests)
    assert 0 < sum(r.tokens for r in results) <= sum(p.tokens for p in worst)
    assert all(p.cached == 0 for p in worst)
    assert judge.worst_case(requests) == []  # everything is scored now: nothing to ask


def test_judge_generative_mode_verifies_only_finished_solutions() -> None:
    backend = YesNoBackendDouble()
    judge = Judge(JudgeConfig(mode="generative", yes_words=["Y"], no_words=["N"]), backend=backend)
    unfinished = request(STEPS[:1])
    finished = ScoreRequest(problem=unfinished.problem, prompt="", steps=STEPS, finished=True)
    a, b = judge_scores(judge, [unfinished, finished])
    assert a.step_scores == (0.5,) and a.tokens == 0
    assert backend.batches == [1, 1]  # one verification, then its verdict question
    # the verification (its prompt + 3 written tokens) and the verdict question after it
    verify, verdict = b.passes
    assert verify.decode == 3 and verdict.prompt > verify.prompt + 3
    assert b.tokens == verify.tokens + verdict.tokens
    assert b.step_scores[-1] == pytest.approx(0.8)
    assert judge.verify_spent["p"] == 3


def test_rule_reward_is_the_arith_checker() -> None:
    (problem,) = ArithTask(ArithTaskConfig(n_problems=1, levels=[4])).load()
    steps = problem.metadata["steps"]
    good = f"{steps[0]['expr']} = {steps[0]['value']}\n\n"
    bad = f"{steps[0]['expr']} = {steps[0]['value'] + 1000}\n\n"
    final = f"The answer is \\boxed{{{problem.reference}}}."
    rule = RuleReward(RuleRewardConfig())
    (res,) = rule.score_batch([ScoreRequest(problem=problem, prompt="", steps=(good, bad, final))])
    assert res.step_scores == (1.0, 0.0, 1.0) and res.tokens == 0


def test_oracle_scores_the_reference_answer() -> None:
    problem = Problem(id="p", prompt="2+2?", reference="4")
    oracle = OracleReward(OracleRewardConfig())
    assert oracle.is_oracle
    right, wrong = oracle.score_batch(
        [
            ScoreRequest(problem=problem, prompt="", steps=("2+2.", "\\boxed{4}")),
            ScoreRequest(problem=problem, prompt="", steps=("2+2.", "\\boxed{5}")),
        ]
    )
    assert right.step_scores == (0.0, 1.0) and wrong.step_scores == (0.0, 0.0)


def test_self_certainty_modes() -> None:
    lps = [-0.1, -0.1, -3.0, -3.0, -0.1, -0.1]
    assert lowest_window_mean(lps, 2) == pytest.approx(-3.0)
    assert lowest_window_mean(lps, 10) == pytest.approx(sum(lps) / 6)
    mean = step_confidence(lps, mode="mean")
    window = step_confidence(lps, mode="window", window=2)
    assert window < mean  # the low stretch pulls the window score down
    assert step_confidence(lps, mode="entropy", entropies=[0.5, 1.5]) == pytest.approx(
        pytest.importorskip("math").exp(-1.0)
    )
    assert step_confidence([], mode="mean") == 0.5
    rm = SelfCertainty(SelfCertaintyConfig(mode="window", window=2))
    (res,) = rm.score_batch(
        [
            ScoreRequest(
                problem=Problem(id="p"),
                prompt="",
                steps=("a", "b"),
                step_logprobs=((-0.1,), tuple(lps)),
            )
        ]
    )
    assert res.step_scores == pytest.approx([pytest.importorskip("math").exp(-0.1), window])


@pytest.mark.slow
@pytest.mark.parametrize("reward", ["judge", "self_certainty"])
def test_real_run_with_a_model_reward(reward: str, store_url: str) -> None:
    """SmolLM2-135M on two arith problems, best-of-2 ranked by the judge (the same model
    asked "is this step correct?") or by its own token confidence."""
    from ttc.launch import compose
    from ttc.runner import Runner
    from ttc.store import Store

    cfg = compose(
        [
            f"store.url={store_url}",
            "backend.model=smollm2-135m",
            "backend.device=cpu",
            "task=arith",
            "task.n_problems=2",
            "strategy=best_of_n",
            "strategy.n=2",
            "strategy.max_tokens=24",
            f"reward={reward}",
            "run.progress=false",
        ]
    )
    outcome = Runner(cfg).run()
    store = Store(store_url)
    results = store.results(outcome.run_id)
    assert outcome.status == "finished" and len(results) == 2
    assert all(r["status"] == "ok" for r in results)
    calls = store.calls(outcome.run_id)
    scores = [c for c in calls if c["kind"] == "score"]
    assert scores and all(c["status"] == "ok" for c in scores)
    nodes = store.nodes(outcome.run_id, results[0]["problem_id"])
    values = [n["score"] for n in nodes if n["node_id"] != 0]
    assert values and all(v is not None and 0.0 <= v <= 1.0 for v in values)
    if reward == "judge":
        assert all(c["reward_tokens"] > 0 for c in scores)
        assert len(set(values)) > 1  # P(Yes) differs between samples
    else:
        assert all(c["reward_tokens"] == 0 for c in scores)
