"""`ttc serve` in front of a real transformers model (a tiny random Llama built offline):
the answer is the model's text, usage is what the model really computed, and a
completion's prompt reaches the model as raw text (a chat goes through the template)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("transformers")

from ttc.store import Store  # noqa: E402
from ttc.types import Problem  # noqa: E402

from conftest import TESTS_DIR  # noqa: E402
from gateway_harness import gateway  # noqa: E402


def tiny_model(path: Path) -> Path:
    """The tiny chat Llama of the hf backend's tests (tests/backends/test_hf.py)."""
    spec = importlib.util.spec_from_file_location("hf_tiny", TESTS_DIR / "backends" / "test_hf.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._build_model_dir(path, with_bos=False, chat=True)


def test_a_tiny_transformers_model_behind_the_gateway(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "tiny")
    url = f"sqlite:///{tmp_path / 'ttc.db'}"
    with gateway(
        url,
        "backend=hf",
        f"backend.model={model}",
        "backend.device=cpu",
        "reward=self_certainty",
        "run.progress=false",
        doubles=False,
    ) as g:
        client = g.client()
        chat = client.chat.completions.create(
            model="ttc/best_of_n",
            messages=[{"role": "user", "content": "the cat sat"}],
            max_tokens=6,
            extra_body={"ttc": {"n": 3}},
        )
        done = client.completions.create(
            model="ttc/self_consistency", prompt="one two", max_tokens=5, n=2
        )
        run_id = g.run.run_id
        raw_ids = g.run.backend.encode("one two")  # the prompt as it stands, not templated
        templated = g.run.backend.encode(
            g.run.backend.render(
                Problem(id="x", messages=({"role": "user", "content": "one two"},))
            )
        )
    text = chat.choices[0].message.content
    assert text and chat.choices[0].finish_reason in ("stop", "length")
    store = Store(url)
    try:
        for resp, samples, per_sample in ((chat, 3, 6), (done, 2, 5)):
            ttc = resp.usage.ttc
            rows = [r for r in store.results(run_id or "") if r["problem_id"] == ttc["problem_id"]]
            (row,) = rows
            assert row["samples"] == samples == ttc["samples"]
            assert 0 < resp.usage.completion_tokens == row["tokens"] <= samples * per_sample
            assert resp.usage.prompt_tokens == row["prompt_tokens"] > 0
            assert ttc["flops"] > 0
        calls = store.calls(run_id or "", done.usage.ttc["problem_id"])
        assert len(templated) > len(raw_ids)
        assert calls and all(c["prompt_tokens"] == len(raw_ids) for c in calls), calls
        nodes = store.nodes(run_id or "", chat.usage.ttc["problem_id"])
        assert any(n["selected"] and n["text"] == text for n in nodes)
    finally:
        store.close()
