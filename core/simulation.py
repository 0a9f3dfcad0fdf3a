"""A simulated environment with known probabilities, for testing what search strategies
claim and that every budget binds (test doubles, not product components; `ttc.testing`
re-exports them). A test suite can register them as a plugin (`backend=sim task=sim
reward=sim`).

- `sim` backend: a character-level fake policy (one token per character). A solution is
  `steps + U{0..spread}` steps, "Step k/K: ok #tag" or "Step k/K: err #tag" followed by
  the step delimiter "\\n\\n", then "So the answer is \\boxed{x}." and end-of-sequence;
  a path that takes a wrong step takes `detour` more steps before it answers (so wrong
  solutions are longer, as they often are). While a path is right, each new step is
  right with probability `q`; after one wrong step every later step is wrong. The answer
  is the reference iff every step was right (with `steps=0`, with probability `q`), so a
  sample is right with probability p = q ** steps. A wrong answer is the reference plus
  one of the `wrong` offsets (with their relative weights) or, with probability `tail`,
  a rare answer drawn from 100_000 values. Everything is written into the problem's
  prompt, so the backend needs no side channel. It has a prefix cache (`prefix_cache`):
  a prompt's longest block-aligned prefix that an earlier sequence (prompt or
  generation) covered is reported as `cached_prompt_tokens`, as vLLM's automatic prefix
  caching does, and a `SimClock` that each call advances by `seconds_per_call`.
- a `sim` backend with its own `q` (`SimBackendConfig.q`) is one of several models of
  different skill on the same problems (the cascade's small and large models): each step
  has a fixed hardness h ~ U(0, 1) per (problem, step), the model takes it right with
  probability `q ** (2 h)`, and, asked for top-k logprobs, reports for every token of
  the step a distribution whose entropy grows with h (0 at h = 0, ln k at h = 1): a
  model is unsure exactly where it tends to err.
- `sim_self` backend: the same policy as an engine that batches by itself
  (`batches_itself`) and counts the prompt once per sample (`prompt_tokens_per_sample`,
  like vLLM); the samples after the first find the prompt's blocks in the cache.
- `sim` reward: a process reward with known noise. A right step (or right answer) scores
  `right`, a wrong one `wrong`; plus Gaussian `noise` (fixed per step text, so rescoring
  agrees); a share `hack_rate` of wrong steps is confidently over-scored at `hack_score`
  (fixed per text, like a systematic blind spot); the final step adds a fixed per-answer
  offset of scale `answer_noise` (the reward model's opinion of each distinct answer).
- `sim` task: seeded problems of that kind.
- Optional behaviours (header fields, set through `make_problems` / the task config):
  `fix`/`keep`, revisions after "Revised solution:" right with known probabilities;
  `overthink`, "Check" steps after the last step (the answer is known early);
  `ready`/`sure`, how the model answers a "(yes/no):" question about its readiness or
  its answer (`SimBackend.p_yes`, read through top logprobs); a text ending with
  "\\boxed{" is completed with the answer.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from ttc.config import BackendConfig, RewardConfig, TaskConfig, bounded
from ttc.interfaces import Backend, Task
from ttc.testing import StepReadingReward, cut_at_stop
from ttc.types import (
    GenerateRequest,
    GenerateResult,
    Generation,
    ModelArchitecture,
    Problem,
    ScoreRequest,
    ScoreResult,
    Usage,
)

PROMPT_END = "Solution:\n"
HEADER = re.compile(r"\[sim ([^\]]*)\]")
BOXED = re.compile(r"\\boxed\{([^}]*)\}")


def sim_prompt(
    pid: str,
    *,
    answer: int,
    steps: int,
    q: float,
    wrong: str,
    tail: float,
    spread: int = 0,
    detour: int = 0,
    **behaviour: float | None,
) -> str:
    """The problem's header; `behaviour` (`fix`, `keep`, `overthink`, `ready`, `sure`) is
    written only where set, so problems without it keep their prompts."""
    more = "".join(f" {k}={v}" for k, v in behaviour.items() if v is not None)
    return (
        f"[sim id={pid} answer={answer} steps={steps} q={q} wrong={wrong} tail={tail}"
        f" spread={spread} detour={detour}{more}]"
    )


def parse_header(text: str) -> dict[str, str]:
    m = HEADER.search(text)
    if m is None:
        raise ValueError(f"not a sim prompt: {text[:60]!r}")
    return dict(kv.split("=", 1) for kv in m.group(1).split())


def _offsets(spec: str) -> list[tuple[int, float]]:
    if not spec:
        return []
    return [(int(o), float(w)) for o, w in (part.split(":") for part in spec.split(","))]


STEP = re.compile(r"Step \d+/(\d+):")
REVISED = "Revised solution:\n"
"""Where a new attempt starts in a solution text (revision, feedback)."""
QUESTION = "(yes/no):"
"""A solution text ending with a line that ends so asks the model a question."""
ANSWER_CUE = "\\boxed{"
"""A solution text ending so is completed with the answer."""


def _depth(done: str) -> int | None:
    """The planned number of steps of a solution, from its last step (None: no step yet)."""
    found = STEP.findall(done)
    return int(found[-1]) if found else None


def hardness(head: dict[str, str], step: int) -> float:
    """The fixed hardness in [0, 1) of step `step` (from 1) of a problem."""
    return _unit("hard", head.get("id", ""), step).random()


def _alternatives(token: int, h: float, k: int) -> tuple[tuple[int, float], ...]:
    """k alternatives, `token` first with probability 1 - h (1 - 1/k) and the rest
    sharing the remainder: entropy 0 at h = 0, ln k at h = 1, increasing in between."""
    import math

    top = 1.0 - h * (1.0 - 1.0 / k)
    rest = (1.0 - top) / (k - 1) if k > 1 else 0.0
    out = [(token, math.log(top))]
    out += [((token + j) % 256, math.log(rest)) for j in range(1, k) if rest > 0.0]
    return tuple(out)


def expected_accuracy(steps: int, q: float) -> float:
    """P(one sample is right)."""
    return q**steps if steps else q


# -- backend -------------------------------------------------------------------------
@dataclass
class SimBackendConfig(BackendConfig):
    name: str = "sim"
    fail_rate: float = bounded(0.0, ge=0.0, le=1.0, help="share of requests that raise")
    fail_after_calls: int | None = bounded(None, ge=0, help="every batch after this many fails")
    prefix_cache: bool = True
    """Report prompt tokens an earlier sequence covered as cached (block-aligned)."""
    seconds_per_call: float = bounded(0.0, ge=0.0, help="what each call adds to `clock`")
    q: float | None = bounded(
        None, ge=0.0, le=1.0, help="this model's own skill (None: the problem's q, no hardness)"
    )


BLOCK = 16
"""Prefix-cache block size in tokens (a prefix is cached in whole blocks)."""


class SimClock:
    """A test clock (seconds) that only the backend moves: budgets in `seconds` become
    deterministic (`Ledger(..., clock=backend.clock)`)."""

    def __init__(self) -> None:
        self.now = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


class PrefixCache:
    """Which block-aligned token prefixes some earlier sequence computed."""

    def __init__(self) -> None:
        self._seen: set[int] = set()
        self._lock = threading.Lock()

    def hit(self, ids: Sequence[int]) -> int:
        """Cached tokens of a prompt: its longest block-aligned prefix seen before (the
        last prompt token is always computed, as an engine must)."""
        best = 0
        with self._lock:
            for end in range(BLOCK, len(ids), BLOCK):
                if hash(tuple(ids[:end])) not in self._seen:
                    break
                best = end
        return best

    def add(self, ids: Sequence[int]) -> None:
        with self._lock:
            for end in range(BLOCK, len(ids) + 1, BLOCK):
                self._seen.add(hash(tuple(ids[:end])))


class SimBackend(Backend):
    name = "sim"

    def __init__(self, config: SimBackendConfig) -> None:
        super().__init__(config)
        self.batches = 0
        self.cache = PrefixCache()
        self.clock = SimClock()

    def render(self, problem: Problem) -> str:
        return (problem.prompt or "") + "\n" + PROMPT_END

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, token_ids: Sequence[int]) -> str:
        return "".join(chr(t) for t in token_ids)

    @property
    def architecture(self) -> ModelArchitecture:
        return ModelArchitecture(
            params=1_000_000, layers=4, hidden=128, heads=4, kv_heads=4, vocab=256
        )

    @staticmethod
    def next_chunk(
        head: dict[str, str], done: str, rng: random.Random, *, skill: float | None = None
    ) -> tuple[str, bool]:
        """The next step (or the final answer) after the solution text `done`; `skill`:
        the model's own q, applied through each step's hardness (`hardness`).

        Only the current attempt (after the last `REVISED`) counts. A revised attempt,
        where the header sets `fix` and `keep`, is decided at its first step: right with
        probability `keep` when the attempt before stated the right answer, else `fix`
        (the model's revisions are better than chance when `fix` exceeds its accuracy);
        without them a revision is a fresh attempt. With `overthink=m`, m "Check" steps
        follow the last step before the answer (an answer ready early)."""
        steps, q = int(head["steps"]), float(head["q"])
        *earlier, current = done.split(REVISED)
        revised = bool(earlier) and "fix" in head
        k = current.count("Step ")
        if skill is not None:
            q = skill ** (2.0 * hardness(head, k + 1))
        right_so_far = "err" not in current
        fate = None
        if revised and (k == 0 or steps == 0):
            before = BOXED.findall(earlier[-1])
            was_right = bool(before) and before[-1].strip() == head["answer"]
            fate = rng.random() < float(head["keep" if was_right else "fix"])
        depth = _depth(current)
        if depth is None:  # the first step fixes the solution's depth
            depth = steps + rng.randint(0, int(head.get("spread", 0)))
        cued = current.endswith(ANSWER_CUE)  # made to answer now: before its last step, wrongly
        if k < depth and not cued:
            if fate is not None:
                right = fate
            else:  # a revised attempt was decided at its first step
                right = right_so_far and (revised or rng.random() < q)
            if right_so_far and not right:  # a wrong turn takes a detour before answering
                depth += int(head.get("detour", 0))
            tag = f"{'ok' if right else 'err'} #{rng.getrandbits(16):04x}"
            return f"Step {k + 1}/{depth}: {tag}\n\n", False
        checks, overthink = current.count("Check "), int(head.get("overthink", 0))
        if checks < overthink and not cued:
            return f"Check {checks + 1}/{overthink}: ok #{rng.getrandbits(16):04x}\n\n", False
        answer = int(head["answer"])
        if fate is not None:
            right = fate
        else:
            right = right_so_far if steps else rng.random() < q
        right = right and k >= depth
        if not right:
            offsets = _offsets(head.get("wrong", ""))
            tail = float(head.get("tail", 0.0))
            if not offsets or rng.random() < tail:
                answer += rng.randint(100, 100_100)
            else:
                answer += rng.choices([o for o, _ in offsets], [w for _, w in offsets])[0]
        if cued:
            return f"{answer}}}.", True
        return f"So the answer is \\boxed{{{answer}}}.", True

    @staticmethod
    def p_yes(head: dict[str, str], done: str) -> float:
        """The model's P(yes) for the question ending `done`. "...ready...": whether the
        current attempt took all its steps (`ready`: P(yes) when it did, 1 - `ready` when
        not; 0.5 by default: readiness not detectable). Else whether its answer is right:
        a share `sure` of answers (fixed per text) is judged confidently (0.95 / 0.05),
        the rest barely (0.55 / 0.45)."""
        current = done.split(REVISED)[-1]
        body, _, line = current.rstrip().rpartition("\n")
        if "ready" in line.lower():
            depth = _depth(body)
            done_steps = depth is not None and body.count("Step ") >= depth
            ready = float(head.get("ready", 0.5))
            return ready if done_steps else 1.0 - ready
        found = BOXED.findall(body)
        right = bool(found) and found[-1].strip() == head["answer"]
        sure = _unit("verdict", head.get("id", ""), body).random() < float(head.get("sure", 0))
        return (0.95 if right else 0.05) if sure else (0.55 if right else 0.45)

    def _generate(self, req: GenerateRequest) -> GenerateResult:
        s = req.sampling
        if self.config.fail_rate and random.Random(f"fail:{s.seed}").random() < (
            self.config.fail_rate
        ):
            raise RuntimeError("sim: injected backend failure")
        head = parse_header(req.prompt)
        done = req.prompt.partition(PROMPT_END)[2]
        if done.rstrip(" ").endswith(QUESTION):
            return self._reply(req, head, done)
        gens = []
        skill = self.config.q
        for i in range(s.n):
            rng = random.Random(f"{s.seed}:{i}")
            text, reason, hit = "", None, None
            hard: list[float] = []  # per character: the hardness of its step
            while reason is None:
                h = hardness(head, (done + text).count("Step ") + 1)
                chunk, ended = self.next_chunk(head, done + text, rng, skill=skill)
                hard += [h] * len(chunk)
                text, hit = cut_at_stop(text + chunk, s.stop)
                if len(text) > s.max_tokens:
                    text, reason, hit = text[: s.max_tokens], "length", None
                elif hit is not None:
                    reason = "stop"
                elif ended:
                    reason = "eos"
                elif len(text) == s.max_tokens:
                    reason = "length"
            ids = tuple(self.encode(text))
            top = None
            if skill is not None and s.logprobs and s.top_logprobs:
                hard = hard[: len(ids)]  # the text may have been cut at max_tokens
                top = tuple(
                    _alternatives(t, h, s.top_logprobs) for t, h in zip(ids, hard, strict=True)
                )
            gens.append(
                Generation(
                    token_ids=ids,
                    text=text,
                    finish_reason=reason,  # type: ignore[arg-type]
                    logprobs=tuple(-0.1 for _ in ids) if s.logprobs else None,
                    stop_reason=hit,
                    top_logprobs=top,
                )
            )
        return GenerateResult(generations=tuple(gens), usage=self._usage(req, gens))

    def _reply(self, req: GenerateRequest, head: dict[str, str], done: str) -> GenerateResult:
        """ " yes" or " no" to a question, drawn with the model's P(yes); with
        `top_logprobs`, the first token's alternatives are both answers' first letters."""
        s, p = req.sampling, min(max(self.p_yes(head, done), 1e-6), 1 - 1e-6)
        gens = []
        for i in range(s.n):
            rng = random.Random(f"{s.seed}:{i}")
            yes = rng.random() < p if s.temperature > 0 else p >= 0.5
            text = "yes" if yes else "no"
            reason = "length" if len(text) > s.max_tokens else "eos"
            text = text[: s.max_tokens]
            ids = tuple(self.encode(text))
            both = ((ord("y"), math.log(p)), (ord("n"), math.log(1 - p)))
            first = tuple(sorted(both, key=lambda a: -a[1]))
            lps = (math.log(p if yes else 1 - p),) + (0.0,) * (len(ids) - 1)
            tops = (first, *(((t, 0.0),) for t in ids[1:]))
            gens.append(
                Generation(
                    token_ids=ids,
                    text=text,
                    finish_reason=reason,  # type: ignore[arg-type]
                    logprobs=lps if s.logprobs else None,
                    top_logprobs=tops if s.logprobs and s.top_logprobs else None,
                )
            )
        return GenerateResult(generations=tuple(gens), usage=self._usage(req, gens))

    def _usage(self, req: GenerateRequest, gens: Sequence[Generation]) -> Usage:
        """The prompt once per request (its samples share one prefill)."""
        prompt = list(req.prompt_token_ids or self.encode(req.prompt))
        cached = self.cache.hit(prompt) if self.config.prefix_cache else 0
        for g in gens:
            self.cache.add(prompt + list(g.token_ids))
        return Usage(
            prompt_tokens=len(prompt),
            cached_prompt_tokens=cached,
            completion_tokens=sum(len(g.token_ids) for g in gens),
        )

    def generate_batch(self, requests: Sequence[GenerateRequest]) -> list[GenerateResult]:
        self.batches += 1
        self.clock.advance(self.config.seconds_per_call)
        limit = self.config.fail_after_calls
        if limit is not None and self.batches > limit:
            raise RuntimeError("sim: the backend went away")
        return [self._generate(r) for r in requests]


class SelfBatchingSimBackend(SimBackend):
    """The sim policy as a continuously batching engine that counts the prompt once per
    sample (each sample is its own engine sequence, as in vLLM)."""

    name = "sim_self"
    batches_itself = True
    prompt_tokens_per_sample = True

    async def agenerate(self, request: GenerateRequest) -> GenerateResult:
        await asyncio.sleep(0)  # requests of concurrent problems interleave
        self.batches += 1
        self.clock.advance(self.config.seconds_per_call)
        limit = self.config.fail_after_calls
        if limit is not None and self.batches > limit:
            raise RuntimeError("sim: the backend went away")
        return self._generate(request)

    def _usage(self, req: GenerateRequest, gens: Sequence[Generation]) -> Usage:
        prompt = list(req.prompt_token_ids or self.encode(req.prompt))
        n = max(len(gens), 1)
        first = self.cache.hit(prompt) if self.config.prefix_cache else 0
        # the first sample computed the prompt's blocks; the others find them cached
        later = (len(prompt) - 1) // BLOCK * BLOCK if self.config.prefix_cache else 0
        for g in gens:
            self.cache.add(prompt + list(g.token_ids))
        return Usage(
            prompt_tokens=n * len(prompt),
            cached_prompt_tokens=first + (n - 1) * later,
            completion_tokens=sum(len(g.token_ids) for g in gens),
        )


# -- reward --------------------------------------------------------------------------
@dataclass
class SimRewardConfig(RewardConfig):
    name: str = "sim"
    right: float = bounded(0.9, ge=0.0, le=1.0, help="mean score of a right step")
    wrong: float = bounded(0.1, ge=0.0, le=1.0, help="mean score of a wrong step")
    noise: float = bounded(0.0, ge=0.0, help="sd of the per-step Gaussian noise")
    hack_rate: float = bounded(0.0, ge=0.0, le=1.0, help="wrong steps scored hack_score")
    hack_score: float = bounded(0.97, ge=0.0, le=1.0)
    answer_noise: float = bounded(0.0, ge=0.0, help="sd of a fixed per-answer offset")
    tokens_per_step: int = bounded(10, ge=0)
    fail_on: str = ""
    """Scoring a branch whose newest step contains this string raises (failure tests)."""


def _unit(*key: object) -> random.Random:
    return random.Random(zlib.crc32("|".join(map(str, key)).encode()))


class SimReward(StepReadingReward):
    name = "sim"

    def step_score(self, problem: Problem, text: str) -> float:
        c = self.config
        m = BOXED.search(text)
        if m is not None:
            good = m.group(1).strip() == (problem.reference or "").strip()
        else:
            good = ": ok " in text
        r = _unit(problem.id, text)
        if not good and c.hack_rate and r.random() < c.hack_rate:
            return c.hack_score
        value = (c.right if good else c.wrong) + (r.gauss(0.0, c.noise) if c.noise else 0.0)
        if m is not None and c.answer_noise:
            value += _unit("answer", problem.id, m.group(1)).gauss(0.0, c.answer_noise)
        return min(max(value, 0.0), 1.0)

    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        out = []
        for req in requests:
            if self.config.fail_on and req.steps and self.config.fail_on in req.steps[-1]:
                raise RuntimeError("sim: injected reward failure")
            # a step that completes an answer cue ("...\\boxed{" + "37}.") is read with it
            texts = [
                ANSWER_CUE + s if i and req.steps[i - 1].endswith(ANSWER_CUE) else s
                for i, s in enumerate(req.steps)
            ]
            scores = tuple(self.step_score(req.problem, s) for s in texts)
            out.append(self.result(req, scores))
        return out


class ExactReward(SimReward):
    """The outcome oracle: 1 for a right final answer, 0 otherwise (steps score 0.5)."""

    name = "sim_exact"
    is_oracle = True

    def step_score(self, problem: Problem, text: str) -> float:
        m = BOXED.search(text)
        if m is None:
            return 0.5
        return 1.0 if m.group(1).strip() == (problem.reference or "").strip() else 0.0


# -- task ----------------------------------------------------------------------------
@dataclass
class SimTaskConfig(TaskConfig):
    name: str = "sim"
    n_problems: int = bounded(16, ge=1)
    steps: int = bounded(3, ge=0)
    q: float = bounded(0.8, ge=0.0, le=1.0, help="P(a step is right | the path is right)")
    wrong: str = "1:1"
    """Wrong-answer offsets and their relative weights, as "offset:weight,..."."""
    tail: float = bounded(0.0, ge=0.0, le=1.0, help="share of wrong answers that are rare")
    spread: int = bounded(0, ge=0, help="a solution has steps + U{0..spread} steps")
    detour: int = bounded(0, ge=0, help="extra steps a path takes after a wrong step")
    fix: float | None = bounded(
        None, ge=0.0, le=1.0, help="P(a revision of a wrong answer is right)"
    )
    keep: float | None = bounded(
        None, ge=0.0, le=1.0, help="P(a revision of a right answer is right)"
    )
    overthink: int | None = bounded(None, ge=0, help="check steps after the last step")
    ready: float | None = bounded(None, ge=0.0, le=1.0, help="P(yes) to 'ready?' once it is")
    sure: float | None = bounded(None, ge=0.0, le=1.0, help="share of confident self-verdicts")


BEHAVIOUR = ("fix", "keep", "overthink", "ready", "sure")


def make_problems(
    n: int,
    *,
    steps: int,
    q: float,
    wrong: str = "1:1",
    tail: float = 0.0,
    spread: int = 0,
    detour: int = 0,
    seed: int = 0,
    prefix: str = "s",
    **behaviour: float | None,
) -> list[Problem]:
    """`n` seeded problems; `behaviour` sets the header fields of `BEHAVIOUR` (revision,
    overthinking, self-knowledge: see `SimBackend.next_chunk` and `p_yes`)."""
    unknown = set(behaviour) - set(BEHAVIOUR)
    if unknown:
        raise TypeError(f"unknown sim behaviour {sorted(unknown)}; known: {BEHAVIOUR}")
    if (behaviour.get("fix") is None) != (behaviour.get("keep") is None):
        raise TypeError("sim revision needs both fix and keep")
    rng = random.Random(seed)
    out = []
    for i in range(n):
        answer = rng.randint(10, 99)
        pid = f"{prefix}{seed}-{i:04d}"
        prompt = sim_prompt(
            pid,
            answer=answer,
            steps=steps,
            q=q,
            wrong=wrong,
            tail=tail,
            spread=spread,
            detour=detour,
            **behaviour,
        )
        out.append(Problem(id=pid, prompt=prompt, reference=str(answer)))
    return out


class SimTask(Task):
    name = "sim"

    def load(self) -> list[Problem]:
        c = self.config
        problems = make_problems(
            c.n_problems,
            steps=c.steps,
            q=c.q,
            wrong=c.wrong,
            tail=c.tail,
            spread=c.spread,
            detour=c.detour,
            seed=c.seed,
            **{k: getattr(c, k) for k in BEHAVIOUR},
        )
        return problems[: c.limit] if c.limit else problems

    def extract_answer(self, text: str) -> str | None:
        found = BOXED.findall(text)
        return found[-1] if found else None

    def normalize(self, answer: str) -> str:
        return answer.strip().lstrip("+")

    def is_correct(self, answer: str | None, problem: Problem) -> bool | None:
        return answer is not None and self.normalize(answer) == problem.reference
