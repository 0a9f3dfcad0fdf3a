"""A synthetic store for tests and benchmarks of the analysis layer (a test double).

`SyntheticEnv` is a population of problems whose per-sample success probability `p` is
known. Its runs are written into a real store through `Store.create_run` and
`Store.record_problem`, exactly as the runner writes them: a root, one branch per sample
(or a tree for the step-level stand-in), the spending of every unit, and calls. What the
analysis recovers from such a store can then be checked against `p`.

- A sample is right with probability `p`; a wrong one states a distractor, the first of
  which takes `dominant` of the wrong mass (so majority voting can fail on hard problems).
- Its reward is noisy: `N(0.65, noise)` when right, `N(0.45, noise)` when wrong.
- Lengths vary: right samples are shorter than wrong ones; the prompt is counted per
  sample with the shared prefix served from the cache after the first.
- `beam_search` (or `dvts`) here is a stand-in step-level strategy: `width` beams of `depth` steps,
  right with probability `1 - (1 - p) ** (width / 2)`.

Nothing here is a product component: it stands in for a model and a reward.
"""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ttc.types import Branch, CallRecord, Problem, ProblemResult

STEP_STANDINS = ("beam_search", "dvts")
"""Step-level strategies the stand-in tree writes (under their own names)."""
PROMPT_TOKENS = 60
FLOPS_PER_TOKEN = 2.7e8  # a 135M-parameter model: 2 * params per token
BYTES_PER_TOKEN = 3.0e5


@dataclass
class SyntheticEnv:
    """Problems with known per-sample success probabilities `p`."""

    p: np.ndarray
    seed: int = 0
    distractors: int = 4
    dominant: float = 0.6
    noise: float = 0.15
    references: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.p = np.asarray(self.p, dtype=float)
        if not self.references:
            self.references = [str(100 + i) for i in range(len(self.p))]

    @classmethod
    def spread(
        cls,
        n_problems: int,
        *,
        seed: int = 0,
        centres: tuple[float, ...] = (0.9, 0.3, 0.03),
        **kw: Any,
    ) -> SyntheticEnv:
        """A real difficulty spread: problems cycle through groups of success probability
        `centres` (default: easy p ~ 0.9, medium p ~ 0.3, hard p ~ 0.03)."""
        rng = np.random.default_rng(seed)
        centre = np.array(centres)[np.arange(n_problems) % len(centres)]
        p = np.clip(centre + rng.normal(0, 0.04, n_problems), 0.005, 0.995)
        return cls(p=p, seed=seed, **kw)

    @property
    def problem_ids(self) -> list[str]:
        return [f"q{i:04d}" for i in range(len(self.p))]

    # -- known values -----------------------------------------------------------------
    def pass_at_k(self, k: int) -> float:
        """The population's true pass@k."""
        return float(np.mean(1.0 - (1.0 - self.p) ** k))

    def wrong_shares(self) -> np.ndarray:
        """How the wrong mass splits over the distractors."""
        rest = (1.0 - self.dominant) / max(self.distractors - 1, 1)
        return np.array([self.dominant] + [rest] * (self.distractors - 1))

    def maj_at_k(self, k: int, *, draws: int = 20000, seed: int = 1) -> float:
        """The population's true maj@k (Monte Carlo over the known answer distribution,
        ties credited fractionally as the estimator does)."""
        rng = np.random.default_rng(seed)
        shares = self.wrong_shares()
        out = []
        for p in self.p:
            probs = np.concatenate([[p], (1 - p) * shares])
            counts = rng.multinomial(k, probs, size=draws)
            top = counts.max(axis=1, keepdims=True)
            tied = (counts == top).sum(axis=1)
            out.append(float(np.mean((counts[:, 0] == top[:, 0]) / tied)))
        return float(np.mean(out))

    # -- writing runs -----------------------------------------------------------------
    def write_run(
        self,
        store: Any,
        *,
        strategy: str,
        n: int = 8,
        width: int = 4,
        depth: int = 3,
        reward: str = "synthetic",
        seed: int | None = None,
        problems: slice | None = None,
        sweep: str | None = None,
        budget: dict[str, Any] | None = None,
        probe: int = 0,
        bulk: bool = False,
        task: dict[str, Any] | None = None,
    ) -> str:
        """Write one run of `strategy` over the problems (all, or a slice) into `store`;
        return its id. `probe` > 0 stores that many probe samples first (as the
        `difficulty` allocator does), flagged in their `extra`. `bulk` writes all problems
        in one transaction (`Store.record_problems`, for large benchmark stores). `task`:
        further fields of the run's task config (as a run with another prompt stores)."""
        # crc32, not hash(): str hashes change with every process (PYTHONHASHSEED), which
        # made the stores, and the tests built on them, differ from run to run
        key = repr((self.seed, strategy, n, width, depth, seed)).encode()
        rng = np.random.default_rng(zlib.crc32(key))
        index = range(len(self.p))[problems or slice(None)]
        params: dict[str, Any] = {"name": strategy}
        if strategy in STEP_STANDINS:
            params.update(beam_width=width, max_steps=depth)
            limits = {"tokens": width * depth * 60}
        else:
            params["n"] = n
            limits = {"samples": n}
        config = {
            "strategy": params,
            "reward": {"name": reward},
            "backend": {"name": "synthetic", "model": "synthetic-135m"},
            "task": {"name": "synthetic", **(task or {})},
            "allocator": {"name": "fixed"},
            "budget": budget or limits,
        }
        run_id = store.create_run(
            config=config,
            strategy=strategy,
            backend="synthetic",
            model="synthetic-135m",
            task="synthetic",
            reward=reward,
            versions={},
            hardware={},
            sweep=sweep,
            n_problems=len(index),
        )
        made = (self._problem(rng, i, strategy, n, width, depth, probe) for i in index)
        if bulk:
            store.record_problems(run_id, list(made))
        else:
            for result in made:
                store.record_problem(run_id, result)
        store.finish_run(run_id, "finished")
        return run_id

    def _sample(self, rng: np.random.Generator, i: int) -> tuple[str, bool, float, int]:
        """One sample of problem `i`: answer, right, reward score, generated tokens."""
        right = bool(rng.random() < self.p[i])
        if right:
            answer = self.references[i]
            tokens = int(rng.integers(40, 120))
        else:
            d = int(rng.choice(self.distractors, p=self.wrong_shares()))
            answer = str(int(self.references[i]) + 1 + d)
            tokens = int(rng.integers(60, 200))
        mean = 0.65 if right else 0.45
        score = float(np.clip(rng.normal(mean, self.noise), 0.0, 1.0))
        return answer, right, score, tokens

    def _problem(
        self,
        rng: np.random.Generator,
        i: int,
        strategy: str,
        n: int,
        width: int,
        depth: int,
        probe: int,
    ) -> ProblemResult:
        ref = self.references[i]
        problem = Problem(id=self.problem_ids[i], prompt=f"synthetic {i}", reference=ref)
        root = Branch(id=0, parent_id=None, step=0, token_ids=(), step_texts=())
        branches = [root]
        calls: list[CallRecord] = []

        def add(parent: int, step: int, text: str, tokens: int, **kw: Any) -> Branch:
            b = Branch(
                id=len(branches),
                parent_id=parent,
                step=step,
                token_ids=(),
                step_texts=(text,),
                new_tokens=tokens,
                cum_logprob=-0.3 * tokens,
                **kw,
            )
            branches.append(b)
            return b

        for _ in range(probe):
            answer, _, _, tokens = self._sample(rng, i)
            b = add(0, 1, f"\\boxed{{{answer}}}", tokens, answer=answer, finish_reason="eos")
            b.extra["probe"] = True
        if strategy in STEP_STANDINS:
            p_beam = 1.0 - (1.0 - self.p[i]) ** (width / 2)
            parents = []
            for _ in range(width):  # one chain of `depth - 1` steps per beam
                pid = 0
                for step in range(1, depth):
                    pid = add(pid, step, "step", 60).id
                parents.append(pid)
            leaves = []
            for p in parents:
                right = bool(rng.random() < p_beam)
                answer = ref if right else str(int(ref) + 1)
                leaves.append(
                    add(
                        p,
                        depth,
                        f"\\boxed{{{answer}}}",
                        60,
                        finished=True,
                        answer=answer,
                        finish_reason="eos",
                    )
                )
            for b in leaves:
                b.score = float(np.clip(rng.normal(0.6, self.noise), 0, 1))
                b.step_scores = (b.score,)
            chosen = max(leaves, key=lambda b: b.score or 0.0)
            samples, tokens = width * depth, width * depth * 60
        else:
            leaves = []
            for _ in range(n):
                answer, _, score, tok = self._sample(rng, i)
                b = add(
                    0,
                    1,
                    f"\\boxed{{{answer}}}",
                    tok,
                    finished=True,
                    answer=answer,
                    finish_reason="eos",
                )
                b.score = score
                b.step_scores = (score,)
                leaves.append(b)
            votes = Counter(b.answer for b in leaves)
            top = votes.most_common(1)[0][0]
            if strategy == "self_consistency":
                chosen = next(b for b in leaves if b.answer == top)
            elif strategy == "best_of_majority":
                frequent = {a for a, c in votes.items() if c >= max(2, votes[top] // 2)} or {top}
                chosen = max(
                    (b for b in leaves if b.answer in frequent), key=lambda b: b.score or 0.0
                )
            else:
                chosen = max(leaves, key=lambda b: b.score or 0.0)
            samples, tokens = n, sum(b.new_tokens for b in leaves)
        chosen.selected = True
        samples += probe
        tokens += sum(b.new_tokens for b in branches if b.extra.get("probe"))
        prompt = PROMPT_TOKENS * samples
        cached = PROMPT_TOKENS * (samples - 1)
        flops = FLOPS_PER_TOKEN * (tokens + prompt - cached)
        moved = BYTES_PER_TOKEN * tokens
        reward_tokens = 0 if strategy == "self_consistency" else tokens
        calls.append(
            CallRecord(
                seq=0,
                kind="generate",
                status="ok",
                n_requests=1,
                n_sequences=samples,
                batch_size=samples,
                prompt_tokens=prompt,
                cached_prompt_tokens=cached,
                completion_tokens=tokens,
                flops=flops,
                latency_s=1e-4 * tokens,
            )
        )
        if reward_tokens:
            calls.append(
                CallRecord(
                    seq=1,
                    kind="score",
                    status="ok",
                    n_requests=len(leaves),
                    n_sequences=len(leaves),
                    reward_tokens=reward_tokens,
                )
            )
        marks = [b.answer == ref for b in leaves]
        votes = Counter(b.answer for b in leaves)
        spent = {
            "samples": samples,
            "tokens": tokens,
            "prompt_tokens": prompt,
            "cached_prompt_tokens": cached,
            "prefill_tokens": prompt - cached,
            "reward_tokens": reward_tokens,
            "reward_calls": 1 if reward_tokens else 0,
            "flops": flops,
            "bytes": moved,
            "seconds": 1e-4 * tokens,
        }
        return ProblemResult(
            index=i,
            problem=problem,
            status="ok",
            answer=chosen.answer,
            correct=chosen.answer == ref,
            pass_at_1=sum(marks) / len(marks),
            majority_correct=votes.most_common(1)[0][0] == ref,
            oracle_correct=any(marks),
            spent=spent,
            budget={"samples": n} if strategy not in STEP_STANDINS else {"tokens": tokens},
            branches=branches,
            calls=calls,
            n_leaves=len(leaves),
        )


def power_law_coverage(a: float, b: float, ks: np.ndarray) -> np.ndarray:
    """The exponentiated power law of coverage: `exp(a * k**b)`."""
    return np.exp(a * np.power(ks, b))
