"""Served requests go through the run's allocator, as `ttc run`'s problems do: over each
request's own budget (never above it), with the allocator's spending rule and plan
(`difficulty`'s probe and bin, `adaptive_stop`'s early stop); an allocator that splits
one budget across a run's problems (`global`) is refused before serving, in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

openai = pytest.importorskip("openai")

from ttc.errors import ConfigError  # noqa: E402
from ttc.plugins.allocators.policy import dump_policy, parse_policy  # noqa: E402
from ttc.serve.server import build, compose_serve  # noqa: E402
from ttc.store import Store  # noqa: E402

from conftest import DOUBLES  # noqa: E402
from gateway_harness import gateway  # noqa: E402

EASY = [{"role": "user", "content": "What is 6 * 7? answer=42"}]
TABLE = (
    "allocator.table=[{name: easy, up_to: 0.2, tokens: 150}, {name: hard, up_to: 1.0, tokens: 900}]"
)


def stored(url: str, run_id: str, problem_id: str) -> dict:
    store = Store(url)
    try:
        (row,) = [r for r in store.results(run_id) if r["problem_id"] == problem_id]
        row["nodes"] = store.nodes(run_id, problem_id)
        return row
    finally:
        store.close()


def test_difficulty_probes_each_request_and_holds_its_bin_to_the_request_budget(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'ttc.db'}"
    with gateway(
        url,
        "backend.steps=0",
        "backend.p_correct=1.0",  # every probe sample agrees: difficulty 0, the easy bin
        "allocator=difficulty",
        "allocator.probe_samples=4",
        "allocator.probe_max_tokens=64",
        TABLE,
        "strategy=best_of_n",
    ) as g:
        client = g.client()
        roomy = client.chat.completions.create(
            model="ttc/best_of_n",
            messages=EASY,
            extra_body={"ttc": {"n": 8, "budget": {"tokens": 600}}},
        )
        tight = client.chat.completions.create(
            model="ttc/best_of_n",
            messages=EASY,
            extra_body={"ttc": {"n": 8, "budget": {"tokens": 100}}},
        )
        run_id = g.run.run_id or ""
    row = stored(url, run_id, roomy.usage.ttc["problem_id"])
    assert row["budget"]["policy"]["name"] == "difficulty"
    assert row["budget"]["policy"]["bin"] == "easy"
    assert sum(1 for n in row["nodes"] if (n["extra"] or {}).get("probe")) == 4
    # the easy bin's 150 tokens, raised to what the probe had spent, never above 600
    assert 150 <= row["budget"]["tokens"] <= 600
    assert roomy.usage.completion_tokens == row["tokens"] <= row["budget"]["tokens"]
    small = stored(url, run_id, tight.usage.ttc["problem_id"])
    # the request's 100 tokens bind the probe and the bin alike
    assert small["budget"]["tokens"] == 100 and 0 < small["tokens"] <= 100
    assert tight.usage.completion_tokens == small["tokens"]


def test_a_policy_chooses_the_strategy_unless_the_request_names_one(tmp_path: Path) -> None:
    policy = parse_policy(
        {
            "ttc_policy": 1,
            "measure": "agreement",
            "probe": {"samples": 4, "max_tokens": 64},
            "bins": [
                {
                    "name": "easy",
                    "up_to": 0.2,
                    "strategy": {"name": "self_consistency", "n": 6, "max_tokens": 64},
                    "budget": {"tokens": 2000},
                },
                {"name": "hard", "up_to": float("inf"), "strategy": {"name": "best_of_n"}},
            ],
        }
    )
    path = tmp_path / "policy.yaml"
    dump_policy(policy, path)
    url = f"sqlite:///{tmp_path / 'ttc.db'}"
    with gateway(
        url,
        "backend.steps=0",
        "backend.p_correct=1.0",
        "allocator=difficulty",
        f"allocator.policy={path}",
        "serve.max_budget.tokens=1000",
    ) as g:
        client = g.client()
        left = client.chat.completions.create(model="ttc", messages=EASY)
        named = client.chat.completions.create(
            model="ttc/best_of_n", messages=EASY, max_tokens=64, extra_body={"ttc": {"n": 2}}
        )
        run_id = g.run.run_id or ""
    row = stored(url, run_id, left.usage.ttc["problem_id"])
    assert left.usage.ttc["strategy"] == "self_consistency"  # the easy bin's
    # the probe's four samples vote too: the bin's six are two more
    assert row["samples"] == 6 and row["trace"]["n"] == 6
    assert row["budget"]["tokens"] == 1000  # the bin's 2000, held to the server's ceiling
    assert any(n["selected"] and n["text"] == left.choices[0].message.content for n in row["nodes"])
    other = stored(url, run_id, named.usage.ttc["problem_id"])
    assert named.usage.ttc["strategy"] == "best_of_n"
    assert other["budget"]["policy"]["bin"] == "easy" and other["budget"]["tokens"] == 1000
    assert other["trace"]["serve"]["strategy"] == "best_of_n"


def test_adaptive_stop_ends_a_served_search_once_its_answers_agree(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ttc.db'}"
    with gateway(
        url,
        "backend.steps=0",
        "backend.p_correct=1.0",
        "allocator=adaptive_stop",
        "allocator.min_answers=4",
    ) as g:
        resp = g.client().chat.completions.create(
            model="ttc/adaptive_consistency",
            messages=EASY,
            # its own criterion would want ~23 agreeing samples at this threshold
            extra_body={"ttc": {"threshold": 0.9999999, "max_samples": 32}},
        )
        run_id = g.run.run_id or ""
    row = stored(url, run_id, resp.usage.ttc["problem_id"])
    assert row["budget"]["policy"]["name"] == "adaptive_stop"
    assert row["budget"]["policy"]["stopped"] is True
    assert 4 <= row["samples"] < 16 and resp.usage.ttc["samples"] == row["samples"]


def test_an_allocator_pooling_a_runs_budget_is_refused_before_serving(tmp_path: Path) -> None:
    cfg = compose_serve(
        [*DOUBLES, f"store.url=sqlite:///{tmp_path / 'ttc.db'}", "allocator=global"]
    )
    with pytest.raises(ConfigError) as err:
        build(cfg)
    message = err.value.message
    assert message.startswith("allocator=global") and "\n" not in message
    assert "fixed" in (err.value.hint or "")
    assert not (tmp_path / "ttc.db").exists()  # nothing was served, no run created
