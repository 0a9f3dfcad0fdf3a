"""Conformance suites for backends and reward models (`ttc.testing` re-exports them).

Subclass one in a test module as `TestX`, give it your plugin, and pytest runs the
inherited tests (the pattern of `StrategyConformance` and Hydra's launcher suite):

- `BackendConformance` pins what a `Generation` and its `Usage` mean: one result per
  request with `n` generations; `prompt_tokens` counted once per request or once per
  sample as the backend's `prompt_tokens_per_sample` declares; `0 <= cached_prompt_tokens
  <= prompt_tokens`; `completion_tokens` the number of generated ids; generated ids that
  decode (after the prompt) to the text; one logprob (and one row of top logprobs) per id;
  valid finish reasons; `max_tokens` respected; stop strings honoured (the text ends
  right after the earliest match, the ids still spell it, also when the match ends inside
  a token); the same seed giving the same samples where the backend claims it; and the
  `n` samples of a request being drawn independently.
- `RewardConformance` pins what a `ScoreResult` means: one result per request with one
  score per step, scores within the documented range, `tokens` equal to the sum of the
  result's model passes, what a call computed within its `worst_case`, and a failure
  surfacing as an error (never as scores).

The backend is built once per test class (`make_backend`), started and closed on one
event loop the class keeps, so backends holding connections (httpx) work.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any, ClassVar

from ttc.interfaces import Backend, RewardModel
from ttc.types import (
    GenerateRequest,
    GenerateResult,
    Generation,
    ModelPass,
    Problem,
    Sampling,
    ScoreRequest,
    ScoreResult,
)

FINISH_REASONS = frozenset({"stop", "eos", "length"})
"""What a backend may report (`error` is the context's, for a failed branch)."""


class _Loop:
    """One event loop per suite class: the plugin under test is started, used and closed
    on it."""

    _loop: ClassVar[asyncio.AbstractEventLoop | None] = None

    @classmethod
    def run(cls, coro: Any) -> Any:
        if cls._loop is None or cls._loop.is_closed():
            cls._loop = asyncio.new_event_loop()
        return cls._loop.run_until_complete(coro)

    @classmethod
    def close_loop(cls) -> None:
        if cls._loop is not None and not cls._loop.is_closed():
            cls._loop.close()
        cls._loop = None


class BackendConformance(_Loop):
    """A conformance suite for generation backends: subclass it as `TestX`, implement
    `make_backend` (an unstarted backend), and set the class attributes that describe
    what your backend claims."""

    problem: ClassVar[Problem] = Problem(id="conformance", prompt="Count: one two three")
    """What the requests continue (rendered and encoded by the backend)."""
    max_tokens: ClassVar[int] = 16
    """Tokens per sample in most tests (small: they run many requests)."""
    seeded: ClassVar[bool] = True
    """The backend claims that the same `Sampling.seed` gives the same samples."""
    logprobs: ClassVar[bool] = True
    """The backend returns token logprobs when asked."""
    top_logprobs: ClassVar[int] = 0
    """How many top alternatives per token the backend returns when asked (0: none)."""
    decodes_ids: ClassVar[bool] = True
    """`decode` reads the generated ids (False for a backend whose ids are a vocabulary
    it cannot decode, e.g. `openai` with byte ids)."""

    _backend: ClassVar[Backend | None] = None

    def make_backend(self) -> Backend:
        """A new, unstarted backend (built once per test class)."""
        raise NotImplementedError("subclasses return their backend from make_backend()")

    @classmethod
    def teardown_class(cls) -> None:
        backend, cls._backend = cls._backend, None
        if backend is not None:
            cls.run(backend.close())
        cls.close_loop()

    # -- helpers --------------------------------------------------------------------------
    def backend(self) -> Backend:
        cls = type(self)
        if cls._backend is None:
            backend = self.make_backend()
            self.run(backend.start())
            cls._backend = backend
        return cls._backend

    def prompt(self) -> tuple[str, tuple[int, ...]]:
        backend = self.backend()
        text = backend.render(self.problem)
        return text, tuple(backend.encode(text))

    def request(self, **sampling: Any) -> GenerateRequest:
        text, ids = self.prompt()
        sampling.setdefault("max_tokens", self.max_tokens)
        return GenerateRequest(text, ids, Sampling(**sampling))

    def generate(self, *requests: GenerateRequest) -> list[GenerateResult]:
        """The requests generated together, as the scheduler hands them to the backend."""
        backend = self.backend()

        async def go() -> list[GenerateResult]:
            if backend.batches_itself:
                return list(await asyncio.gather(*(backend.agenerate(r) for r in requests)))
            return await asyncio.to_thread(backend.generate_batch, list(requests))

        results: list[GenerateResult] = self.run(go())
        assert len(results) == len(requests), "one result per request, in order"
        for req, res in zip(requests, results, strict=True):
            assert len(res.generations) == req.sampling.n, "n generations per request"
        return results

    def after(self, prompt_ids: Sequence[int], ids: Sequence[int]) -> str:
        """The text `ids` add after the prompt (decoded in context)."""
        backend = self.backend()
        head = backend.decode(list(prompt_ids))
        full = backend.decode([*prompt_ids, *ids])
        assert full.startswith(head), "decoding the prompt with more ids changed the prompt"
        return full[len(head) :]

    def assert_spells(self, prompt_ids: Sequence[int], g: Generation) -> None:
        if not self.decodes_ids:
            return
        text = self.after(prompt_ids, g.token_ids)
        if g.finish_reason == "eos" and text != g.text:  # the end token may decode to text
            text = self.after(prompt_ids, g.token_ids[:-1])
        assert text == g.text, f"token ids spell {text!r}, the text is {g.text!r}"

    def stops_for(
        self, g: Generation, prompt_ids: Sequence[int]
    ) -> tuple[list[tuple[str, int]], list[int]]:
        """Two-character stop strings of a generation's text and where their first match
        ends, those that end inside a token first (where the text shows tokens); and
        where the tokens end in the text."""
        text = g.text
        ends = [len(text)]
        if self.decodes_ids:
            ends = sorted(
                {len(self.after(prompt_ids, g.token_ids[:i])) for i in range(1, len(g.token_ids))}
                | {len(text)}
            )
        out = []
        for end in range(2, len(text) + 1):
            stop = text[end - 2 : end]
            if "\ufffd" in stop or text.find(stop) + 2 != end:
                continue
            out.append((stop, end))
        out.sort(key=lambda se: (se[1] in ends, se[1]))
        return out, ends

    # -- the suite ------------------------------------------------------------------------
    def test_usage_counts_the_prompt_as_the_backend_declares(self) -> None:
        backend = self.backend()
        one, three = self.generate(self.request(n=1, seed=1), self.request(n=3, seed=2))
        _, ids = self.prompt()
        per = 3 if backend.prompt_tokens_per_sample else 1
        assert one.usage.prompt_tokens == len(ids)
        assert three.usage.prompt_tokens == per * len(ids), (
            f"prompt_tokens_per_sample={backend.prompt_tokens_per_sample}: a request of 3 "
            f"samples of a {len(ids)}-token prompt counts {per * len(ids)} prompt tokens, "
            f"not {three.usage.prompt_tokens}"
        )
        (again,) = self.generate(self.request(n=3, seed=2))  # now a prefix-cache hit may show
        for r in (one, three, again):
            u = r.usage
            assert 0 <= u.cached_prompt_tokens <= u.prompt_tokens
            assert u.completion_tokens == sum(len(g.token_ids) for g in r.generations)
            assert u.latency_s >= 0

    def test_generated_ids_spell_the_text(self) -> None:
        _, ids = self.prompt()
        results = self.generate(
            self.request(n=2, seed=3, temperature=1.0),
            self.request(n=1, seed=4, temperature=0.0, max_tokens=3 * self.max_tokens),
        )
        for r in results:
            for g in r.generations:
                assert g.token_ids, "a generation has at least one token"
                self.assert_spells(ids, g)

    def test_logprobs_align_with_the_ids(self) -> None:
        if not self.logprobs:
            return
        k = self.top_logprobs
        (r,) = self.generate(self.request(n=2, seed=5, logprobs=True, top_logprobs=k))
        for g in r.generations:
            assert g.logprobs is not None and len(g.logprobs) == len(g.token_ids)
            assert all(math.isfinite(x) and x <= 1e-6 for x in g.logprobs)
            if not k:
                continue
            assert g.top_logprobs is not None and len(g.top_logprobs) == len(g.token_ids)
            for tid, lp, row in zip(g.token_ids, g.logprobs, g.top_logprobs, strict=True):
                assert 1 <= len(row) <= k
                values = [v for _, v in row]
                assert values == sorted(values, reverse=True), "most likely first"
                for t, v in row:
                    if t == tid:
                        assert math.isclose(v, lp, abs_tol=1e-4), "one distribution for both"

    def test_finish_reasons_are_valid_and_max_tokens_is_respected(self) -> None:
        short, plain = self.generate(
            self.request(n=2, seed=6, max_tokens=3), self.request(n=2, seed=7)
        )
        for r, limit in ((short, 3), (plain, self.max_tokens)):
            for g in r.generations:
                assert g.finish_reason in FINISH_REASONS
                assert len(g.token_ids) <= limit
                if g.finish_reason == "length":
                    assert len(g.token_ids) == limit
                assert g.stop_reason is None  # no stop strings were asked for

    def test_stop_strings_end_the_text_and_the_ids_spell_it(self) -> None:
        _, ids = self.prompt()
        greedy = dict(n=1, temperature=0.0, seed=8, max_tokens=2 * self.max_tokens)
        (full,) = self.generate(self.request(**greedy))
        (g,) = full.generations
        stops, token_ends = self.stops_for(g, ids)
        assert len(stops) >= 2, f"the greedy text {g.text!r} offers too few stop strings"
        for stop, end in stops[:2]:
            (cut,) = self.generate(self.request(stop=(stop,), logprobs=self.logprobs, **greedy))
            (h,) = cut.generations
            assert h.finish_reason == "stop" and h.stop_reason == stop
            assert h.text == g.text[:end], "the text ends right after the earliest match"
            self.assert_spells(ids, h)
            if self.logprobs:
                assert h.logprobs is not None and len(h.logprobs) == len(h.token_ids)
            assert cut.usage.completion_tokens == len(h.token_ids)
        # two stop strings, listed later one first: the earlier match wins (the later one
        # ends in a later token; engines that check a token's new text against the list
        # in order may pick either when both end in one token)
        stop_a, end_a = stops[0]
        token_end = min(e for e in token_ends if e >= end_a)
        later = [(s, e) for s, e in stops if e > token_end]
        assert later, f"the greedy text {g.text!r} offers no stop string in a later token"
        stop_b = later[0][0]
        (both,) = self.generate(self.request(stop=(stop_b, stop_a), **greedy))
        (h,) = both.generations
        assert h.stop_reason == stop_a and h.text == g.text[:end_a]
        (absent,) = self.generate(self.request(stop=("\x00\x01",), **greedy))
        assert absent.generations[0].finish_reason in ("eos", "length")

    def test_the_same_seed_gives_the_same_samples(self) -> None:
        if not self.seeded:
            return
        a, b = self.generate(self.request(n=2, seed=9), self.request(n=2, seed=9))
        (c,) = self.generate(self.request(n=2, seed=9))
        for r in (b, c):
            assert [g.token_ids for g in r.generations] == [g.token_ids for g in a.generations]
            assert [g.text for g in r.generations] == [g.text for g in a.generations]

    def test_the_samples_of_a_request_are_independent(self) -> None:
        seeds = range(10, 16)
        results = self.generate(*(self.request(n=3, seed=s, temperature=1.0) for s in seeds))
        texts = [[g.text for g in r.generations] for r in results]
        assert any(len(set(t)) > 1 for t in texts), "every request's samples were copies"
        if self.seeded:  # sample j of seed s is not sample 0 of seed s + j
            shifted = [texts[i][1] == texts[i + 1][0] for i in range(len(texts) - 1)]
            assert not all(shifted), "sample j of seed s repeats the first sample of seed s+j"


class RewardConformance(_Loop):
    """A conformance suite for reward models: subclass it as `TestX`, implement
    `make_reward` (and `make_requests` for what your reward can read), and set the class
    attributes that describe what it claims. Scores go through a scheduler, as in a run,
    so a reward that asks the policy (`needs_backend`) gets `make_backend()` as its
    policy."""

    score_range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    bounded: ClassVar[bool] = True
    """`worst_case` bounds every call (False: it returns None, and a run limiting
    reward tokens or FLOPs refuses the reward at start)."""

    def make_reward(self) -> RewardModel:
        raise NotImplementedError("subclasses return their reward from make_reward()")

    def make_backend(self) -> Backend:
        """The policy backend (used by rewards that `needs_backend`)."""
        from ttc.testing import ScriptedBackend, ScriptedBackendConfig

        return ScriptedBackend(ScriptedBackendConfig())

    def make_requests(self) -> list[ScoreRequest]:
        """Branches to score: a problem and solutions of 1 to 3 steps, one of them
        scored up to its last step already (incremental), one finished."""
        problem = Problem(id="conf", prompt="What is 3 + 4, times 2?", reference="14")
        steps = ("3 + 4 = 7\n\n", "7 * 2 = 14\n\n", "The answer is \\boxed{14}.")
        wrong = ("3 + 4 = 8\n\n", "8 * 2 = 16\n\n", "The answer is \\boxed{16}.")
        return [
            ScoreRequest(problem=problem, prompt="", steps=steps[:1]),
            ScoreRequest(problem=problem, prompt="", steps=steps[:2], scored_steps=1),
            ScoreRequest(problem=problem, prompt="", steps=steps, finished=True),
            ScoreRequest(problem=problem, prompt="", steps=wrong, finished=True),
        ]

    def make_failing(self) -> tuple[RewardModel, list[ScoreRequest]] | None:
        """A reward and requests it cannot score (its model broken, its input missing):
        each must come back as an error, not as scores. None: no such case to test."""
        return None

    def score(
        self, reward: RewardModel, requests: Sequence[ScoreRequest]
    ) -> tuple[list[ModelPass] | None, list[ScoreResult | BaseException]]:
        """The call's worst case (taken first, as the ledger does) and its outcomes."""
        from ttc.scheduler import Scheduler

        async def go() -> tuple[list[ModelPass] | None, list[ScoreResult | BaseException]]:
            scheduler = Scheduler(self.make_backend(), reward, max_wait_s=0.0)
            await scheduler.backend.start()
            await reward.start()
            try:
                worst = reward.worst_case(requests)
                outcomes = await scheduler.score(requests)
            finally:
                await reward.close()
                await scheduler.backend.close()
            return worst, [o if isinstance(o, BaseException) else o.result for o in outcomes]

        result: tuple[list[ModelPass] | None, list[ScoreResult | BaseException]]
        result = self.run(go())
        return result

    def results(self) -> tuple[list[ScoreRequest], list[ModelPass] | None, list[ScoreResult]]:
        requests = self.make_requests()
        worst, outcomes = self.score(self.make_reward(), requests)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if errors:
            raise errors[0]
        return requests, worst, [o for o in outcomes if isinstance(o, ScoreResult)]

    @classmethod
    def teardown_class(cls) -> None:
        cls.close_loop()

    # -- the suite ------------------------------------------------------------------------
    def test_one_result_per_request_with_one_score_per_step(self) -> None:
        requests, _, results = self.results()
        assert len(results) == len(requests)
        for req, res in zip(requests, results, strict=True):
            assert len(res.step_scores) == len(req.steps)

    def test_scores_lie_in_the_documented_range(self) -> None:
        low, high = self.score_range
        _, _, results = self.results()
        for res in results:
            for s in res.step_scores:
                assert math.isfinite(s) and low <= s <= high, f"{s} outside [{low}, {high}]"

    def test_tokens_are_the_sum_of_the_model_passes(self) -> None:
        _, worst, results = self.results()
        for res in results:
            assert res.tokens == sum(p.tokens for p in res.passes)
            for p in res.passes:
                assert 0 <= p.cached <= p.prompt and p.decode >= 0
        if worst == []:  # it runs no model for these requests
            assert all(res.tokens == 0 and not res.passes for res in results)

    def test_a_call_computes_no_more_than_its_worst_case(self) -> None:
        _, worst, results = self.results()
        if not self.bounded:
            assert worst is None
            return
        assert worst is not None, "worst_case returned None: set bounded = False if meant"
        assert sum(r.tokens for r in results) <= sum(p.tokens for p in worst)
        assert all(p.cached == 0 for p in worst), "a worst case assumes nothing cached"

    def test_a_failure_is_an_error_not_a_score(self) -> None:
        case = self.make_failing()
        if case is None:
            return
        reward, requests = case
        _, outcomes = self.score(reward, requests)
        for out in outcomes:
            assert isinstance(out, Exception), f"a request it cannot score got {out!r}"
