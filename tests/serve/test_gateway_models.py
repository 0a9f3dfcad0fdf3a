"""A strategy with a second model (`cascade`) behind `ttc serve`: the server starts the
model its strategy declares, a request choosing such a strategy gets its model started
on first use (once, then shared by every request with the same model config), and the
server closes them all when it stops."""

from __future__ import annotations

from pathlib import Path

import pytest

openai = pytest.importorskip("openai")

from ttc.store import Store  # noqa: E402

from gateway_harness import Gateway, gateway  # noqa: E402

QUESTION = [{"role": "user", "content": "What is 6 * 7? answer=42"}]
# threshold 0: every chunk of the small model is handed to the large one
LARGE = {"threshold": 0.0, "large_model": None, "large_backend": {"p_correct": 0.9}}


def _models_used(gw: Gateway, problem_id: str) -> set[str]:
    store = Store(gw.store_url)
    try:
        nodes = store.nodes(gw.run.run_id or "", problem_id)
    finally:
        store.close()
    return {n["extra"].get("model") for n in nodes if n["node_id"]}


def _ask(gw: Gateway, **ttc: object) -> str:
    resp = gw.client().chat.completions.create(
        model="ttc/cascade", messages=QUESTION, extra_body={"ttc": ttc}
    )
    assert resp.usage.ttc["strategy"] == "cascade"
    return str(resp.usage.ttc["problem_id"])


def test_a_server_of_cascade_starts_its_second_model(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ttc.db'}"
    with gateway(
        url,
        "strategy=cascade",
        "strategy.threshold=0",
        "strategy.large_model=null",
        "+strategy.large_backend.p_correct=0.9",
    ) as gw:
        assert _models_used(gw, _ask(gw)) == {"policy", "large"}
        (started,) = gw.run.started_models()
        assert started.started and not started.closed
    assert started.closed  # the server's shutdown closed it


def test_a_request_for_cascade_gets_its_model_started_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ttc.db'}"
    with gateway(url) as gw:  # the server's own strategy has no second model
        assert gw.run.started_models() == []
        first = _ask(gw, **LARGE)
        second = _ask(gw, **LARGE)
        assert _models_used(gw, first) == _models_used(gw, second) == {"policy", "large"}
        (started,) = gw.run.started_models()  # one model for both requests
        assert started.started and not started.closed
        other = _ask(gw, **{**LARGE, "large_backend": {"p_correct": 0.2}})
        assert _models_used(gw, other) == {"policy", "large"}
        models = gw.run.started_models()
        assert len(models) == 2 and models[0] is started  # another config, another model
    assert all(m.closed for m in models)
