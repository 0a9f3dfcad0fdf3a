"""`ctx.extend` and `ctx.ask` on the transformers backend (a tiny random Llama whose
tokenizer prepends BOS): written text carries no second BOS, and `ask` returns the
model's own next-token probabilities of the options, as a forward pass computes them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import torch
from test_hf import _build_model_dir

from ttc import testing
from ttc.backends.hf import HFBackend, HFBackendConfig
from ttc.scheduler import Scheduler
from ttc.types import Problem, Sampling


@pytest.fixture(scope="module")
def bos_backend(tmp_path_factory: pytest.TempPathFactory) -> HFBackend:
    path: Path = _build_model_dir(tmp_path_factory.mktemp("tiny-bos"), with_bos=True, chat=False)
    backend = HFBackend(HFBackendConfig(model=str(path), device="cpu"))
    asyncio.run(backend.start())
    return backend


def test_written_text_and_asked_probabilities(bos_backend: HFBackend) -> None:
    backend = bos_backend
    bos = backend.encode("")
    assert bos, "this tokenizer prepends BOS: the case extend must handle"
    problem = Problem(id="q", prompt="the cat sat", reference="1")
    seen: dict[str, Any] = {}

    async def go() -> None:
        scheduler = Scheduler(backend, None, max_batch_size=8, max_wait_s=0.0)
        ctx, _ = testing.wire(
            problem, scheduler=scheduler, task=testing.SyntheticTask(testing.SyntheticTaskConfig())
        )
        (step,) = await ctx.generate([ctx.root], Sampling(n=1, max_tokens=6, temperature=0.0))
        written = ctx.extend(step, " is it ready?")
        seen["ids"] = written.token_ids[len(step.token_ids) :]
        seen["probs"] = await ctx.ask(step, " is it ready?", options=("yes", "no"), top=400)
        seen["prompt"] = list(ctx._prompt_ids) + list(written.token_ids)

    asyncio.run(go())
    ids = list(seen["ids"])
    assert ids == backend.encode(" is it ready?")[len(bos) :] and ids[0] != bos[0]
    # the same probabilities from one forward pass over the same tokens
    loaded = backend._require()
    with torch.no_grad():
        logits = loaded.model(torch.tensor([seen["prompt"]])).logits[0, -1].float()
    probs = torch.softmax(logits, -1)
    mass = {"yes": 0.0, "no": 0.0}
    for tid in range(len(probs)):
        word = backend.decode([tid]).strip().lower()
        for option in ("yes", "no"):
            if word and (option.startswith(word) or word.startswith(option)):
                mass[option] += float(probs[tid])
                break
    total = mass["yes"] + mass["no"]
    assert total > 0
    assert abs(seen["probs"]["yes"] - mass["yes"] / total) < 1e-3
    assert abs(sum(seen["probs"].values()) - 1.0) < 1e-9
