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
  writes a verification (greedy, up to `verify_max_tokens`), then the score is P(Yes)
  after "Verdict:". It has its own budget: `verify_tokens` generated tokens per problem;
  once spent, completed solutions are scored as in `mode=solution`. Unfinished branches
  score 0.5 (no verdict yet).

Probabilities come from the backend's `next_token_logprobs` (the transformers backend has
it); other backends are asked for one greedy token with logprobs, which gives P(top token)
only: a top token `Yes` scores p, `No` 1 - p, anything else 0.5.

Reward tokens are what the judge computed on the backend: prompt tokens net of its prefix
cache, plus verification tokens generated.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from ttc.config import RewardConfig, bounded
from ttc.interfaces import Backend, RewardModel
from ttc.plugins.rewards.common import ScoreCache, digest, question_of
from ttc.types import GenerateRequest, Problem, Sampling, ScoreRequest, ScoreResult

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
    verify_tokens: int = bounded(2048, ge=0, help="verification tokens per problem")
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
        self.scores = ScoreCache()
        self.verify_spent: dict[str, int] = defaultdict(int)
        self._candidates: tuple[list[int], list[int]] | None = None
        self._lock = threading.Lock()

    # -- prompts ----------------------------------------------------------------------
    def _ids(self, text: str, *, continuation: str = "") -> list[int]:
        """Token ids of the judge question as a user turn (chat template applied by the
        backend), followed by `continuation` as the start of the model's answer."""
        rendered = self.backend.render(
            Problem(id="judge", messages=({"role": "user", "content": text},))
        )
        return list(self.backend.encode(rendered + continuation))

    def _step(self, s: str) -> str:
        return s.strip() if self.config.strip_steps else s

    def candidates(self) -> tuple[list[int], list[int]]:
        """Token ids that start a Yes and a No answer."""
        if self._candidates is None:
            words = (self.config.yes_words, self.config.no_words)
            sets: list[list[int]] = []
            for group in words:
                ids: set[int] = set()
                for w in group:
                    for spelled in (w, " " + w):
                        enc = self._encode_piece(spelled)
                        if enc:
                            ids.add(enc[0])
                sets.append(sorted(ids))
            yes, no = sets
            self._candidates = (yes, [i for i in no if i not in yes])
        return self._candidates

    def _encode_piece(self, text: str) -> list[int]:
        tok = getattr(getattr(self.backend, "_loaded", None), "tokenizer", None)
        if tok is not None:
            return list(tok(text, add_special_tokens=False)["input_ids"])
        ids = list(self.backend.encode(text))
        bos = list(self.backend.encode(""))
        return ids[len(bos) :] if ids[: len(bos)] == bos else ids

    # -- backend calls ----------------------------------------------------------------
    def p_yes(self, prompts: list[list[int]]) -> tuple[list[float], list[int]]:
        """P(Yes) after each prompt, and the tokens the backend computed for each."""
        if not prompts:
            return [], []
        fast = getattr(self.backend, "next_token_logprobs", None)
        yes, no = self.candidates()
        if fast is not None:
            rows = fast(prompts, [*yes, *no])
            out = []
            for lps, _ in rows:
                p_yes = sum(math.exp(v) for v in lps[: len(yes)])
                p_no = sum(math.exp(v) for v in lps[len(yes) :])
                out.append(p_yes / (p_yes + p_no) if p_yes + p_no > 0 else 0.5)
            return out, [u.computed_prompt_tokens for _, u in rows]
        sampling = Sampling(n=1, temperature=0.0, max_tokens=1, logprobs=True)
        results = self.backend.generate_batch(_requests(prompts, sampling))
        out, tokens = [], []
        for res in results:
            g = res.generations[0]
            tokens.append(res.usage.computed_prompt_tokens + len(g.token_ids))
            p = math.exp(g.logprobs[0]) if g.logprobs else 0.5
            first = g.token_ids[0] if g.token_ids else -1
            out.append(p if first in yes else 1.0 - p if first in no else 0.5)
        return out, tokens

    def verify(self, prompts: list[list[int]]) -> tuple[list[list[int]], list[int]]:
        """Greedy verifications of each prompt; their token ids and the tokens each cost."""
        sampling = Sampling(n=1, temperature=0.0, max_tokens=self.config.verify_max_tokens)
        results = self.backend.generate_batch(_requests(prompts, sampling))
        out, tokens = [], []
        for res in results:
            g = res.generations[0]
            tokens.append(res.usage.computed_prompt_tokens + len(g.token_ids))
            out.append(list(g.token_ids))
        return out, tokens

    # -- scoring ----------------------------------------------------------------------
    def _get(self, key: str) -> float:
        value = self.scores.get(key)
        return 0.5 if value is None else float(value)

    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        with self._lock:
            if self.config.mode == "step":
                return self._score_steps(requests)
            return self._score_solutions(requests)

    def _score_steps(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        keys: list[list[str]] = []
        todo: dict[str, list[int]] = {}
        owner: dict[str, int] = {}
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
                if self.scores.get(key) is None and key not in todo:
                    todo[key] = self._ids(text)
                    owner[key] = i
            keys.append(row)
        tokens = self._fill(todo, owner)
        return [
            ScoreResult(step_scores=tuple(self._get(k) for k in row), tokens=tokens[i])
            for i, row in enumerate(keys)
        ]

    def _fill(self, todo: dict[str, list[int]], owner: dict[str, int]) -> dict[int, int]:
        """Score every pending prompt; tokens charged to the request that asked first."""
        tokens: dict[int, int] = defaultdict(int)
        if not todo:
            return tokens
        items = list(todo.items())
        values, spent = self.p_yes([ids for _, ids in items])
        for (key, _), v, n in zip(items, values, spent, strict=True):
            self.scores.put(key, v)
            tokens[owner[key]] += n
        return tokens

    def _score_solutions(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        generative = self.config.mode == "generative"
        prefix_keys: list[list[str]] = []
        todo: dict[str, list[int]] = {}
        owner: dict[str, int] = {}
        verify: dict[str, tuple[int, str]] = {}
        tokens: dict[int, int] = defaultdict(int)
        for i, r in enumerate(requests):
            q = question_of(r.problem)
            steps = [self._step(s) for s in r.steps]
            tag = "verify" if generative and r.finished else "judge"
            row = [digest(tag, q, "\n".join(steps[: k + 1])) for k in range(len(steps))]
            prefix_keys.append(row)
            if not row or self.scores.get(row[-1]) is not None or row[-1] in todo:
                continue
            solution = "\n".join(steps)
            if generative and not r.finished:
                self.scores.put(row[-1], 0.5)
                continue
            left = self.config.verify_tokens - self.verify_spent[r.problem.id]
            if generative and left >= self.config.verify_max_tokens:
                text = self.config.verify_prompt.format(question=q, solution=solution)
                verify[row[-1]] = (i, text)
                self.verify_spent[r.problem.id] += self.config.verify_max_tokens  # reserve
            else:
                text = self.config.solution_prompt.format(question=q, solution=solution)
                todo[row[-1]] = self._ids(text)
                owner[row[-1]] = i
        if verify:
            prompts = [self._ids(text) for _, text in verify.values()]
            written, spent = self.verify(prompts)
            for (key, (i, _)), p, w, n in zip(verify.items(), prompts, written, spent, strict=True):
                # the reservation becomes what the verification really generated
                self.verify_spent[requests[i].problem.id] += len(w) - self.config.verify_max_tokens
                todo[key] = [*p, *w, *self._encode_piece("\nVerdict:")]
                owner[key] = i
                tokens[i] += n
        for i, n in self._fill(todo, owner).items():
            tokens[i] += n
        out = []
        for i, row in enumerate(prefix_keys):
            if not row:
                out.append(ScoreResult(step_scores=()))
                continue
            last = self._get(row[-1])
            earlier = tuple(last if (v := self.scores.get(k)) is None else v for k in row[:-1])
            out.append(ScoreResult(step_scores=(*earlier, last), tokens=tokens[i]))
        return out


def _requests(prompts: list[list[int]], sampling: Sampling) -> list[GenerateRequest]:
    return [GenerateRequest("", tuple(p), sampling) for p in prompts]
