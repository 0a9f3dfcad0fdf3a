"""Every built-in reward passes `ttc.testing.RewardConformance` (what a score result
means): rule, oracle, self_certainty (each mode), the ORM and every PRM family on tiny
random models, and the judge through a scheduler over a policy double."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import pytest

from ttc.interfaces import Backend, RewardModel
from ttc.plugins.rewards.oracle import OracleReward, OracleRewardConfig
from ttc.plugins.rewards.rule import RuleReward, RuleRewardConfig
from ttc.plugins.rewards.self_certainty import SelfCertainty, SelfCertaintyConfig
from ttc.plugins.tasks.arith import ArithTask, ArithTaskConfig
from ttc.testing import RewardConformance
from ttc.types import GenerateResult, Problem, ScoreRequest


class TestRule(RewardConformance):
    def make_reward(self) -> RewardModel:
        return RuleReward(RuleRewardConfig())

    def make_requests(self) -> list[ScoreRequest]:
        (problem,) = ArithTask(ArithTaskConfig(n_problems=1, levels=[3])).load()
        steps = problem.metadata["steps"]
        good = tuple(f"{s['expr']} = {s['value']}\n\n" for s in steps)
        bad = (f"{steps[0]['expr']} = {steps[0]['value'] + 1}\n\n",)
        final = f"The answer is \\boxed{{{problem.reference}}}."
        return [
            ScoreRequest(problem=problem, prompt="", steps=good[:1]),
            ScoreRequest(problem=problem, prompt="", steps=(*good, final), finished=True),
            ScoreRequest(problem=problem, prompt="", steps=bad, scored_steps=0),
        ]

    def make_failing(self) -> tuple[RewardModel, list[ScoreRequest]]:
        # a problem without the steps the rule checks against (not an arith problem)
        return self.make_reward(), super().make_requests()


class TestOracle(RewardConformance):
    def make_reward(self) -> RewardModel:
        return OracleReward(OracleRewardConfig())

    def make_failing(self) -> tuple[RewardModel, list[ScoreRequest]]:
        # no reference to compare with: an error, not a score of 0 for every branch
        unknown = Problem(id="u", prompt="What is 3 + 4, times 2?")
        return self.make_reward(), [
            ScoreRequest(problem=unknown, prompt="", steps=("The answer is \\boxed{14}.",))
        ]


def _with_logprobs(requests: list[ScoreRequest]) -> list[ScoreRequest]:
    """The requests with per-token logprobs and top-k entropies, as generations carry."""
    out = []
    for i, r in enumerate(requests):
        lps = tuple(tuple(-0.05 * (i + 1) * (1 + j % 3) for j in range(len(s))) for s in r.steps)
        ents = tuple(tuple(min(-x * 3, math.log(20)) for x in lp) for lp in lps)
        out.append(
            ScoreRequest(
                problem=r.problem,
                prompt=r.prompt,
                steps=r.steps,
                scored_steps=r.scored_steps,
                finished=r.finished,
                step_logprobs=lps,
                step_entropies=ents,
            )
        )
    return out


@pytest.mark.parametrize("mode", ["mean", "entropy", "window"])
class TestSelfCertainty(RewardConformance):
    mode = "mean"

    @pytest.fixture(autouse=True)
    def _mode(self, mode: str) -> None:
        self.mode = mode

    def make_reward(self) -> RewardModel:
        return SelfCertainty(SelfCertaintyConfig(mode=self.mode, window=4))

    def make_requests(self) -> list[ScoreRequest]:
        return _with_logprobs(super().make_requests())


class TestORM(RewardConformance):
    def make_reward(self) -> RewardModel:
        transformers = pytest.importorskip("transformers")
        import torch
        from test_rewards import QWEN_TEMPLATE, tiny_config, tiny_tokenizer

        from ttc.plugins.rewards.orm import ORMConfig, OutcomeRewardModel

        torch.manual_seed(0)
        tok = tiny_tokenizer(["<|im_start|>", "<|im_end|>"], template=QWEN_TEMPLATE)
        cfg = tiny_config("Qwen2", len(tok))
        cfg.num_labels = 1
        model = transformers.Qwen2ForSequenceClassification(cfg).eval()
        self.model = model
        orm = OutcomeRewardModel(ORMConfig())
        orm.attach(model, tok)
        return orm

    def make_failing(self) -> tuple[RewardModel, list[ScoreRequest]]:
        orm = self.make_reward()
        _break(self.model)
        return orm, self.make_requests()


def _break(model: Any) -> None:
    """The model runs out of memory at every forward (a double of a failing model)."""

    def oom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("out of memory (a broken model double)")

    for module in {model, model.base_model}:
        module.forward = oom


@pytest.mark.parametrize("family", ["qwen", "math_shepherd", "rlhflow", "skywork"])
class TestPRM(RewardConformance):
    family = "qwen"

    @pytest.fixture(autouse=True)
    def _family(self, family: str) -> None:
        self.family = family

    def make_reward(self) -> RewardModel:
        """A fresh reward (empty score cache) over the family's tiny model, built once."""
        pytest.importorskip("transformers")
        from ttc.plugins.rewards.prm import PRMConfig, ProcessRewardModel

        if self.family not in _PRMS:
            _PRMS[self.family] = self.build()[1:]
        model, tok, model_dir = _PRMS[self.family]
        prm = ProcessRewardModel(PRMConfig(family=self.family))
        prm.attach(model, tok, model_dir=model_dir)
        return prm

    def build(self) -> tuple[RewardModel, Any, Any, Path | None]:
        from test_rewards import make_prm

        path = Path(tempfile.mkdtemp(prefix="ttc-conf-prm-"))
        prm, model, tok = make_prm(self.family, path)
        return prm, model, tok, path / "skywork" if self.family == "skywork" else None

    def make_failing(self) -> tuple[RewardModel, list[ScoreRequest]]:
        prm, model, _, _ = self.build()
        _break(model)
        return prm, self.make_requests()


_PRMS: dict[str, tuple[Any, Any, Path | None]] = {}
"""Each family's tiny model, tokenizer and model directory (built once per session)."""


class FailingPolicyDouble(Backend):
    """A policy whose every generation fails (the judge's questions cannot be asked)."""

    name = "failing_policy_double"

    def __init__(self) -> None:
        super().__init__(None)

    def render(self, problem: Problem) -> str:
        return "U: " + problem.messages[-1]["content"] + "\nA:"

    def encode(self, text: str) -> list[int]:
        return [ord(c) % 250 for c in text]

    def generate_batch(self, requests: Any) -> list[GenerateResult]:
        raise RuntimeError("the policy server went away")


@pytest.mark.parametrize("mode", ["step", "solution", "generative"])
class TestJudge(RewardConformance):
    mode = "step"

    @pytest.fixture(autouse=True)
    def _mode(self, mode: str) -> None:
        self.mode = mode

    def make_backend(self) -> Backend:
        return self.policy

    def judge(self, policy: Backend) -> RewardModel:
        from ttc.plugins.rewards.judge import Judge, JudgeConfig

        self.policy = policy
        config = JudgeConfig(mode=self.mode, yes_words=["Y"], no_words=["N"], top_logprobs=3)
        return Judge(config, backend=policy)

    def make_reward(self) -> RewardModel:
        from test_rewards import YesNoBackendDouble

        return self.judge(YesNoBackendDouble())

    def make_failing(self) -> tuple[RewardModel, list[ScoreRequest]]:
        # generative mode scores unfinished branches 0.5 without asking (documented)
        asked = [r for r in self.make_requests() if r.finished or self.mode != "generative"]
        return self.judge(FailingPolicyDouble()), asked
