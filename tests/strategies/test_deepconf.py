"""deepconf's confidence measures, and the strategy on the simulator."""

from __future__ import annotations

import math
import random

import pytest
import sim

from ttc.strategies.deepconf import (
    DeepConf,
    DeepConfConfig,
    lowest_group_confidence,
    percentile,
)
from ttc.types import token_confidence


def test_token_confidence_is_minus_the_mean_top_k_logprob() -> None:
    assert token_confidence(((1, -0.1), (2, -3.0), (3, -5.9))) == pytest.approx(3.0)
    assert token_confidence(()) == 0.0
    # a peaked distribution (sure) scores higher than a flat one
    sure = token_confidence(((1, math.log(0.97)), (2, math.log(0.02)), (3, math.log(0.01))))
    flat = token_confidence(((1, math.log(0.34)), (2, math.log(0.33)), (3, math.log(0.33))))
    assert sure > flat


def test_lowest_group_confidence_is_the_weakest_full_window() -> None:
    conf = [3.0] * 10 + [1.0] * 4 + [3.0] * 10
    assert lowest_group_confidence(conf, 4) == pytest.approx(1.0)
    assert lowest_group_confidence(conf, 8) == pytest.approx((4 * 1.0 + 4 * 3.0) / 8)
    assert lowest_group_confidence([2.0, 4.0], 8) == pytest.approx(3.0)  # shorter: mean
    assert lowest_group_confidence([], 8) == math.inf
    rng = random.Random(5)
    for _ in range(50):  # against the definition, by brute force
        xs = [rng.uniform(0, 5) for _ in range(rng.randint(1, 40))]
        w = rng.randint(1, 12)
        brute = (
            min(sum(xs[i : i + w]) / w for i in range(len(xs) - w + 1))
            if len(xs) > w
            else sum(xs) / len(xs)
        )
        assert lowest_group_confidence(xs, w) == pytest.approx(brute)


def test_percentile_interpolates() -> None:
    assert percentile([1, 2, 3, 4, 5], 0.0) == 1
    assert percentile([1, 2, 3, 4, 5], 0.5) == 3
    assert percentile([5, 1, 3], 1.0) == 5
    assert percentile([0, 10], 0.1) == pytest.approx(1.0)


def test_on_the_simulator_it_answers_within_its_sample_limit() -> None:
    problems = sim.make_problems(30, steps=0, q=0.7, wrong="1:1", seed=91)
    cfg = DeepConfConfig(warmup=4, max_samples=10, batch=2)
    out = sim.solve_all(DeepConf(cfg), problems, sim.Env(reward=None))
    assert all(o.solution.answer is not None for o in out)
    assert all(o.spent.samples <= 10 for o in out)
    for o in out:
        t = o.solution.trace
        assert t["ended_by"] in ("consensus", "max_samples")
        assert t["warmup"] == 4 and t["kept"] >= 1
    # easy problems settle before the sample limit
    assert sim.mean_spent(out, "samples") < 10
    assert sim.accuracy(out) >= 0.8
