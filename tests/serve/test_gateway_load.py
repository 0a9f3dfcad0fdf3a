"""64 concurrent clients on loopback, each a best-of-4 under a token budget that binds:
every request is answered exactly once, no budget is exceeded, the backend's batches
gather the searches of many requests (cross-request batching), and so do the store's
transactions (group commit)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")

from ttc.store import Store  # noqa: E402

import doubles  # noqa: E402
from gateway_harness import gateway  # noqa: E402

CLIENTS = 64


def budget(i: int) -> int:
    """Client i's token budget: four whole samples need ~270, so it binds for some."""
    return 150 + 5 * i


def test_64_concurrent_best_of_4_requests_share_batches_within_budget(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ttc.db'}"
    doubles.BATCH_SIZES.clear()
    with gateway(
        url,
        "backend.delay_s=0.05",  # a batch takes a while, as a model's does
        f"run.concurrency={CLIENTS}",
        f"scheduler.max_batch_size={CLIENTS}",
    ) as g:
        client = g.async_client()

        async def one(i: int):
            return await client.chat.completions.create(
                model="ttc/best_of_n",
                messages=[{"role": "user", "content": f"Problem {i} answer={10 + i}"}],
                extra_body={"ttc": {"n": 4, "budget": {"tokens": budget(i)}}},
            )

        async def all_clients():
            try:
                return await asyncio.gather(*(one(i) for i in range(CLIENTS)))
            finally:
                await client.close()

        responses = asyncio.run(all_clients())
        run_id = g.run.run_id
        served_sizes = list(g.run.batch_stats.sizes)
        assert g.run.writer is not None
        commits = list(g.run.writer.batch_sizes)
    sizes = list(doubles.BATCH_SIZES)

    ids = [r.usage.ttc["problem_id"] for r in responses]
    assert len(set(ids)) == CLIENTS
    for i, r in enumerate(responses):
        assert f"Problem {i}" not in r.choices[0].message.content  # an answer, not an echo
        assert r.usage.completion_tokens <= budget(i)
        assert r.usage.ttc["budget"]["tokens"] == budget(i)
        assert r.usage.ttc["samples"] <= 4
    store = Store(url)
    try:
        rows = store.results(run_id or "")
        assert sorted(r["problem_id"] for r in rows) == sorted(ids)  # each stored once
        assert all(r["status"] == "ok" for r in rows)
        assert all(0 < r["tokens"] <= r["budget"]["tokens"] for r in rows)
        reasons = {r.choices[0].finish_reason for r in responses}
        assert reasons == {"length", "stop"}, "the budget binds for some requests only"
        by_id = {r["problem_id"]: r for r in rows}
        for r in responses:
            assert r.usage.completion_tokens == by_id[r.usage.ttc["problem_id"]]["tokens"]
        assert store.get_run(run_id or "")["status"] == "finished"
    finally:
        store.close()
    # group commit: requests finishing together shared transactions, each stored once
    assert sum(commits) == CLIENTS and len(commits) < CLIENTS / 2, commits
    assert sum(sizes) >= CLIENTS and served_sizes == sizes
    mean = sum(sizes) / len(sizes)
    assert mean > 8, f"mean backend batch {mean:.1f} over {len(sizes)} batches: {sizes}"
