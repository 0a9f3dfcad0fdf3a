"""Progress that moves: the hf decode loop reports tokens as it produces them, the live
line counts them before the batch ends, and the totals table tells the run's wall time
from the mean latency of a problem, formatting numbers like the progress line."""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from ttc import progress
from ttc.cli._common import fmt, totals_table
from ttc.launch import compose
from ttc.progress import ProgressObserver
from ttc.runner import Runner
from ttc.types import CallRecord, GenerateRequest, Sampling

from conftest import DOUBLES

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _tiny_model_dir(path: Path) -> Path:
    """A random two-layer Llama with a word-level tokenizer (built offline)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<pad>", "<bos>", "<eos>", "<unk>", *[f"w{i}" for i in range(60)]]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )
    config = LlamaConfig(
        vocab_size=len(words),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_hf_decode_loop_reports_tokens_as_it_produces_them(tmp_path: Path) -> None:
    from ttc.backends.hf import HFBackend, HFBackendConfig

    backend = HFBackend(HFBackendConfig(model=str(_tiny_model_dir(tmp_path)), device="cpu"))
    asyncio.run(backend.start())
    backend.eos_token_ids = frozenset()  # every sample runs to max_tokens
    reports: list[int] = []
    progress.add_token_listener(reports.append)
    try:
        ids = tuple(backend.encode("w1 w2 w3"))
        request = GenerateRequest(
            prompt="", prompt_token_ids=ids, sampling=Sampling(n=3, max_tokens=16, seed=1)
        )
        [result] = backend.generate_batch([request])
    finally:
        progress.remove_token_listener(reports.append)
    generated = result.usage.completion_tokens
    assert generated == 3 * 16
    # one report per decode step (not one per batch), adding up to what was generated
    assert len(reports) >= max(len(g.token_ids) for g in result.generations)
    assert sum(reports) == generated


def _call(tokens: int) -> CallRecord:
    return CallRecord(
        seq=0, kind="generate", status="ok", n_requests=1, n_sequences=1, batch_size=1,
        prompt_tokens=10, cached_prompt_tokens=0, completion_tokens=tokens,
        reward_tokens=0, flops=0.0, latency_s=0.1,
    )  # fmt: skip


def test_live_line_counts_tokens_before_the_batch_ends() -> None:
    observer = ProgressObserver(Console(file=io.StringIO(), width=200))
    observer.on_run_start(run_id="r", config={"budget": {}}, n_problems=2)
    try:
        progress.tokens_generated(1200)
        progress.tokens_generated(34)
        assert "1,234 generated" in observer._stats()
        # the call that carried those tokens ends: they are not counted twice
        observer.on_call(run_id="r", problem_id="p", call=_call(1234))
        assert "1,234 generated" in observer._stats()
        observer.on_call(run_id="r", problem_id="p", call=_call(10))
        assert "1,244 generated" in observer._stats()
    finally:
        observer.on_run_end(run_id="r", status="finished", totals={})
    progress.tokens_generated(5)  # after the run: no longer listening
    assert "1,244 generated" in observer._stats()


def _rows(table: Any) -> dict[str, str]:
    out = io.StringIO()
    Console(file=out, width=200).print(table)
    rows = {}
    for line in out.getvalue().splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line) if c.strip()]
        if len(cells) == 2:
            rows[cells[0]] = cells[1]
    return rows


def test_totals_show_wall_time_and_mean_latency_separately(store_url: str) -> None:
    cfg = compose(
        [
            *DOUBLES,
            f"store.url={store_url}",
            "backend.delay_s=0.05",
            "task.n_problems=8",
            "run.concurrency=8",
        ]
    )
    outcome = Runner(cfg).run()
    totals = outcome.totals
    rows = _rows(totals_table(outcome.run_id, totals))
    assert "wall_s" in rows and "mean_latency_s" in rows
    assert "seconds_per_problem" not in rows
    # eight problems overlapped: the run took far less than their latencies added up
    assert 0 < totals["wall_s"] < 8 * totals["mean_latency_s"]
    assert rows["tokens"] == f"{totals['tokens']:,}"


def test_numbers_are_formatted_like_the_progress_line() -> None:
    assert fmt(5212, "tokens") == "5,212"
    assert fmt(1234567, "samples") == "1,234,567"
    assert fmt(0.5, "accuracy") == "50.0%"
