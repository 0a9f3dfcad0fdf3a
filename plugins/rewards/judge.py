"""`judge`: the run's own model as a verifier (LLM-as-judge), no extra weights.

The judge asks the policy model a yes/no question and scores `P(Yes) / (P(Yes) + P(No))`
from its next-token distribution (`Yes`/`No` spelled as `yes_words` / `no_words`, with
and without a leading space):

- `mode=step` (default): for each step, "is the latest step correct?" given the
  question and the steps before it. Incremental: scores are cached by prompt, so a branch
  that grew by one step asks about the new step only.
- `mode=solution`: one question about the whole solution so far ("is this solution
  correct?"); earlier steps keep the scores their prefixes got.
- `mode=generative`: a generative verifier for completed solutions only. The model first
  writes `verifications` (V) verifications (greedy when V = 1, else sampled at
  `verify_temperature`, up to `verify_max_tokens` each), then reads P(Yes) after
  "Verdict:" behind each; the V verdicts are aggregated (`verdicts`: their mean P(Yes),
  or the share of them that say Yes) — S solutions x V verifications (Singhi et al.,
  "When To Solve, When To Verify", 2025). A score request may ask for its own V
  (`ScoreRequest.verifications`, from `ctx.score(..., verifications=V)`). It has its own
  budget: `verify_tokens` generated tokens per problem; once a solution's V
  verifications no longer fit, it is scored as in `mode=solution`. Unfinished branches
  score 0.5 (no verdict yet).

The judge reaches the policy model through the run's scheduler (`RewardModel.policy`),
so it works on every backend and its questions are batched with the strategies' calls.
Each question is one greedy token with the `top_logprobs` most likely next tokens
(`Sampling.top_logprobs`); P(Yes) and P(No) are summed over the Yes and No tokens among
them. When neither appears the question scores 0.5 (no information).

Reward tokens are what the judge computed on the policy model: prompt tokens net of its
prefix cache, plus verification tokens generated; its FLOPs are charged at the policy's
shape. A score call is authorised against its worst case (every question's prompt
computed whole, every verification running to `verify_max_tokens`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from ttc.config import RewardConfig, bounded
from ttc.errors import BackendError
from ttc.interfaces import Backend, RewardModel
from ttc.plugins.rewards.common import ScoreCache, digest, question_of
from ttc.types import (
    GenerateRequest,
    GenerateResult,
    Generation,
    ModelArchitecture,
    ModelPass,
    Problem,
    Sampling,
    ScoreRequest,
    ScoreResult,
)

STEP_PROMPT = (
    "Problem:\n{question}\n\nSolution so far:\n{before}\n\nLatest step:\n{step}\n\n"
    "Is the latest step correct? Answer Yes or No."
)
SOLUTION_PROMPT = (
    "Problem:\n{question}\n\nProposed solution:\n{solution}\n\n"
    "Is this solution correct? Answer Yes or No."
)
VERIFY_PROMPT = (
    "Problem:\n{question}\n\nProposed solution:\n{solution}\n\n"
    "Check the solution step by step, then end with 'Verdict: Yes' if it is correct "
    "or 'Verdict: No' if it is not."
)


@dataclass
class JudgeConfig(RewardConfig):
    name: str = "judge"
    aggregate: str = bounded("min", choices=["last", "min", "prod", "mean"])
    mode: str = bounded("step", choices=["step", "solution", "generative"])
    step_prompt: str = STEP_PROMPT
    """Template with {question}, {before} (earlier steps) and {step}."""
    solution_prompt: str = SOLUTION_PROMPT
    """Template with {question} and {solution}."""
    verify_prompt: str = VERIFY_PROMPT
    """Generative mode: template with {question} and {solution}."""
    verify_max_tokens: int = bounded(256, ge=1, help="tokens per verification")
    verifications: int = bounded(1, ge=1, help="generative mode: verifications per solution (V)")
    verify_temperature: float = bounded(
        0.7, ge=0.0, help="sampling temperature of the verifications when V > 1"
    )
    verdicts: str = bounded(
        "mean", choices=["mean", "vote"], help="V verdicts -> score: mean P(Yes) or Yes share"
    )
    verify_tokens: int = bounded(2048, ge=0, help="verification tokens per problem")
    top_logprobs: int = bounded(20, ge=1, help="next-token alternatives read per question")
    yes_words: list[str] = field(default_factory=lambda: ["Yes", "yes", "YES"])
    no_words: list[str] = field(default_factory=lambda: ["No", "no", "NO"])
    strip_steps: bool = True


class Judge(RewardModel):
    name = "judge"
    needs_backend = True
    config: JudgeConfig

    def __init__(self, config: JudgeConfig, *, backend: Backend) -> None:
        super().__init__(config)
        self.backend = backend
        """Renders and encodes the questions; the answers come through `policy`."""
        self.scores = ScoreCache()
        self.verify_spent: dict[str, int] = defaultdict(int)
        self._candidates: tuple[frozenset[int], frozenset[int]] | None = None

    @property
    def architecture(self) -> ModelArchitecture | None:
        """The policy's shape: the judge runs on the policy model."""
        return self.backend.architecture

    # -- prompts ----------------------------------------------------------------------
    def _question(self, text: str, *, continuation: str = "") -> _Question:
        """The judge question as a user turn (chat template applied by the backend),
        followed by `continuation` as the start of the model's answer."""
        rendered = self.backend.render(
            Problem(id="judge", messages=({"role": "user", "content": text},))
        )
        full = rendered + continuation
        return _Question(full, tuple(self.backend.encode(full)))

    def _step(self, s: str) -> str:
        return s.strip() if self.config.strip_steps else s

    def candidates(self) -> tuple[frozenset[int], frozenset[int]]:
        """Token ids that start a Yes and a No answer."""
        if self._candidates is None:
            sets: list[set[int]] = []
            for group in (self.config.yes_words, self.config.no_words):
                ids: set[int] = set()
                for w in group:
                    for spelled in (w, " " + w):
                        enc = self._encode_piece(spelled)
                        if enc:
                            ids.add(enc[0])
                sets.append(ids)
            yes, no = sets
            self._candidates = (frozenset(yes), frozenset(no - yes))
        return self._candidates

    def _encode_piece(self, text: str) -> list[int]:
        tok = getattr(getattr(self.backend, "_loaded", None), "tokenizer", None)
        if tok is None:
            tok = getattr(getattr(self.backend, "_codec", None), "tokenizer", None)
        if tok is not None:
            return list(tok(text, add_special_tokens=False)["input_ids"])
        ids = list(self.backend.encode(text))
        bos = list(self.backend.encode(""))
        return ids[len(bos) :] if ids[: len(bos)] == bos else ids

    # -- planning (what a call must ask) ----------------------------------------------
    def _plan(self, requests: Sequence[ScoreRequest]) -> _Plan:
        """Which questions a call must ask the policy (read-only: the worst case and the
        call itself plan alike)."""
        plan = _Plan()
        if self.config.mode == "step":
            for i, r in enumerate(requests):
                q = question_of(r.problem)
                steps = [self._step(s) for s in r.steps]
                row = []
                for k, step in enumerate(steps):
                    text = self.config.step_prompt.format(
                        question=q, before="\n".join(steps[:k]) or "(none)", step=step
                    )
                    key = digest(text)
                    row.append(key)
                    if self.scores.get(key) is None and key not in plan.ask:
                        plan.ask[key] = (i, self._question(text))
                plan.keys.append(row)
            return plan
        generative = self.config.mode == "generative"
        reserved: dict[str, int] = defaultdict(int)
        for i, r in enumerate(requests):
            q = question_of(r.problem)
            steps = [self._step(s) for s in r.steps]
            tag = "verify" if generative and r.finished else "judge"
            row = [digest(tag, q, "\n".join(steps[: k + 1])) for k in range(len(steps))]
            plan.keys.append(row)
            if not row or self.scores.get(row[-1]) is not None:
                continue
            key = row[-1]
            if key in plan.ask or key in plan.verify or key in plan.fixed:
                continue
            solution = "\n".join(steps)
            if generative and not r.finished:
                plan.fixed[key] = 0.5
                continue
            pid = r.problem.id
            left = self.config.verify_tokens - self.verify_spent[pid] - reserved[pid]
            v = self.verifications_of(r)
            if generative and left >= v * self.config.verify_max_tokens:
                reserved[pid] += v * self.config.verify_max_tokens
                text = self.config.verify_prompt.format(question=q, solution=solution)
                plan.verify[key] = (i, self._question(text))
                plan.count[key] = v
            else:
                text = self.config.solution_prompt.format(question=q, solution=solution)
                plan.ask[key] = (i, self._question(text))
        return plan

    def verifications_of(self, request: ScoreRequest) -> int:
        """V for one request: its own, else the config's."""
        v = request.verifications
        return self.config.verifications if v is None else max(int(v), 1)

    def worst_case(self, requests: Sequence[ScoreRequest]) -> list[ModelPass]:
        """Every question's prompt computed whole; each of a solution's V verifications
        written to `verify_max_tokens` (its prompt computed once per verification), then
        its verdict question read whole."""
        plan = self._plan(requests)
        verdict = len(self._encode_piece(VERDICT))
        passes = [ModelPass(prompt=len(q.ids)) for _, q in plan.ask.values()]
        for key, (_, q) in plan.verify.items():
            written = self.config.verify_max_tokens
            for _ in range(plan.count.get(key, 1)):
                passes.append(ModelPass(prompt=len(q.ids), decode=written))
                passes.append(ModelPass(prompt=len(q.ids) + written + verdict))
        return passes

    # -- scoring ----------------------------------------------------------------------
    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        raise NotImplementedError(
            "the judge asks the policy model through the scheduler: await ascore_batch"
        )

    async def _ask(
        self, questions: Sequence[_Question], sampling: Sampling
    ) -> list[GenerateResult]:
        if self.policy is None:
            raise BackendError(
                "the judge has no path to the policy model",
                hint="build the Scheduler with the judge as its reward model",
            )
        requests = [GenerateRequest(q.text, q.ids, sampling) for q in questions]
        outcomes = await self.policy.generate(requests)
        results = []
        for out in outcomes:
            if isinstance(out, BaseException):
                raise BackendError(f"the judge's question failed: {type(out).__name__}: {out}")
            results.append(out.result)
        return results

    async def ascore_batch(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        import asyncio

        # rendering and tokenising may block (a server's /tokenize): off the event loop
        plan = await asyncio.to_thread(self._plan, requests)
        passes: dict[int, list[ModelPass]] = defaultdict(list)
        for key, value in plan.fixed.items():
            self.scores.put(key, value)
        if plan.verify:
            await self._verify(requests, plan, passes)
        if plan.ask:
            yes, no = self.candidates()
            sampling = Sampling(
                n=1,
                temperature=0.0,
                max_tokens=1,
                logprobs=True,
                top_logprobs=self.config.top_logprobs,
            )
            items = list(plan.ask.items())
            results = await self._ask([q for _, (_, q) in items], sampling)
            for (key, (owner, _)), res in zip(items, results, strict=True):
                self.scores.put(key, p_yes(res.generations[0], yes, no))
                passes[owner].append(_pass(res))
            for key, parts in plan.verdicts.items():  # a solution's V verdicts, aggregated
                values = [self._get(k) for k in parts]
                if self.config.verdicts == "vote":
                    values = [1.0 if v > 0.5 else 0.0 for v in values]
                self.scores.put(key, sum(values) / len(values))
        out = []
        for i, row in enumerate(plan.keys):
            mine = tuple(passes.get(i, ()))
            tokens = sum(p.tokens for p in mine)
            if not row:
                out.append(ScoreResult(step_scores=(), tokens=tokens, passes=mine))
                continue
            if self.config.mode == "step":
                scores = tuple(self._get(k) for k in row)
            else:
                last = self._get(row[-1])
                earlier = tuple(last if (v := self.scores.get(k)) is None else v for k in row[:-1])
                scores = (*earlier, last)
            out.append(ScoreResult(step_scores=scores, tokens=tokens, passes=mine))
        return out

    async def _verify(
        self,
        requests: Sequence[ScoreRequest],
        plan: _Plan,
        passes: dict[int, list[ModelPass]],
    ) -> None:
        """Write the verifications; their verdict questions join `plan.ask`."""
        cfg = self.config
        items = list(plan.verify.items())
        for key, (owner, _) in items:  # reserve
            v = plan.count.get(key, 1)
            self.verify_spent[requests[owner].problem.id] += v * cfg.verify_max_tokens
        # one call per V: the V verifications of a solution are samples of one request
        groups: dict[int, list[tuple[str, tuple[int, _Question]]]] = defaultdict(list)
        for item in items:
            groups[plan.count.get(item[0], 1)].append(item)
        verdict = self._encode_piece(VERDICT)
        for v, group in groups.items():
            sampling = Sampling(
                n=v,
                temperature=0.0 if v == 1 else cfg.verify_temperature,
                max_tokens=cfg.verify_max_tokens,
            )
            results = await self._ask([q for _, (_, q) in group], sampling)
            for (key, (owner, q)), res in zip(group, results, strict=True):
                written = sum(len(g.token_ids) for g in res.generations)
                # the reservation becomes what the verifications really generated
                self.verify_spent[requests[owner].problem.id] += written - v * cfg.verify_max_tokens
                passes[owner].append(_pass(res))
                for j, g in enumerate(res.generations):
                    sub = f"{key}#{j}" if v > 1 else key
                    plan.ask[sub] = (
                        owner,
                        _Question(q.text + g.text + VERDICT, (*q.ids, *g.token_ids, *verdict)),
                    )
                    if v > 1:
                        plan.verdicts.setdefault(key, []).append(sub)

    def _get(self, key: str) -> float:
        value = self.scores.get(key)
        return 0.5 if value is None else float(value)


VERDICT = "\nVerdict:"
"""What follows a written verification before the judge reads P(Yes)."""


@dataclass(frozen=True, slots=True)
class _Question:
    text: str
    ids: tuple[int, ...]


@dataclass
class _Plan:
    keys: list[list[str]] = field(default_factory=list)
    """Per request, the score key of each step."""
    ask: dict[str, tuple[int, _Question]] = field(default_factory=dict)
    """Key -> (the request it is charged to, the question): P(Yes) to read."""
    verify: dict[str, tuple[int, _Question]] = field(default_factory=dict)
    """Key -> (request, verification prompt): to write first (generative mode)."""
    fixed: dict[str, float] = field(default_factory=dict)
    """Keys scored without asking (an unfinished branch in generative mode)."""
    count: dict[str, int] = field(default_factory=dict)
    """Key -> how many verifications to write (V; generative mode)."""
    verdicts: dict[str, list[str]] = field(default_factory=dict)
    """Key -> the keys of its V verdict questions, whose scores it aggregates (V > 1)."""


def p_yes(g: Generation, yes: frozenset[int], no: frozenset[int]) -> float:
    """P(Yes) / (P(Yes) + P(No)) over the top next-token alternatives of a one-token
    generation (0.5 when neither is among them). Without alternatives, the sampled
    token's probability stands in for its side."""
    if g.top_logprobs:
        alternatives = dict(g.top_logprobs[0])
        p_y = sum(math.exp(lp) for t, lp in alternatives.items() if t in yes)
        p_n = sum(math.exp(lp) for t, lp in alternatives.items() if t in no)
        return p_y / (p_y + p_n) if p_y + p_n > 0 else 0.5
    if not g.token_ids or not g.logprobs:
        return 0.5
    p, first = math.exp(g.logprobs[0]), g.token_ids[0]
    return p if first in yes else 1.0 - p if first in no else 0.5


def _pass(res: GenerateResult) -> ModelPass:
    u = res.usage
    written = sum(len(g.token_ids) for g in res.generations)
    # a one-token answer is read off the prompt's last logits: nothing decoded
    decode = written if written > 1 else 0
    return ModelPass(prompt=u.prompt_tokens, cached=u.cached_prompt_tokens, decode=decode)
