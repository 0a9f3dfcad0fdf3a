"""Run labels and families of `ttc.analysis.load` on a mixed sweep."""

from __future__ import annotations

from typing import Any

from ttc.analysis.load import _runs_frame


def _run(run_id: str, strategy: dict[str, Any], reward: str = "self_certainty") -> dict[str, Any]:
    return {
        "id": run_id,
        "name": None,
        "status": "finished",
        "sweep": None,
        "created_at": None,
        "strategy": strategy["name"],
        "model": "m",
        "task": "arith",
        "reward": reward,
        "backend": "hf",
        "n_problems": 4,
        "config": {
            "strategy": strategy,
            "reward": {"name": reward, "aggregate": "mean"},
            "task": {"name": "arith", "n_problems": 4},
            "budget": {"tokens": 64, "samples": None},
        },
    }


SAMPLE = {"temperature": 0.7, "max_tokens": 32, "top_k": 0, "aggregate": None, "max_steps": 32}
STEP = {"temperature": 0.7, "step_tokens": 8, "max_steps": 4, "weighting": "softmax"}


def test_labels_name_only_what_varies_within_a_strategy() -> None:
    """A sweep over strategies with different fields (found on the real sweep): each
    label names the parameters that differ between runs of its strategy, not every field
    the other strategies lack (the legend read `best_of_n(aggregate=None, max_steps=32,
    max_tokens=32, ..., step_tokens=None, ...)`)."""
    frame = _runs_frame(
        [
            _run("a", {"name": "best_of_n", "n": 2, **SAMPLE}),
            _run("b", {"name": "best_of_n", "n": 4, **SAMPLE}),
            _run("c", {"name": "self_consistency", "n": 4, **SAMPLE}),
            _run("d", {"name": "particle_filter", "particles": 4, **STEP}),
            _run("e", {"name": "particle_filter", "particles": 8, **STEP}),
        ]
    ).set_index("id")
    assert frame.loc["a", "label"] == "best_of_n(n=2)"
    assert frame.loc["c", "label"] == "self_consistency(n=4)"  # n varies among the runs
    assert frame.loc["e", "label"] == "particle_filter(particles=8)"
    assert set(frame["family"]) == {"best_of_n", "self_consistency", "particle_filter"}
    assert frame["config_key"].nunique() == 5


def test_a_key_outside_the_strategy_that_differs_is_named() -> None:
    frame = _runs_frame(
        [
            _run("a", {"name": "best_of_n", "n": 4, **SAMPLE}, reward="self_certainty"),
            _run("b", {"name": "best_of_n", "n": 4, **SAMPLE}, reward="rule"),
            _run("c", {"name": "particle_filter", "particles": 4, **STEP}, reward="rule"),
        ]
    ).set_index("id")
    assert frame.loc["a", "label"] == "best_of_n(reward=self_certainty)"
    assert frame.loc["c", "label"] == "particle_filter(reward=rule)"
