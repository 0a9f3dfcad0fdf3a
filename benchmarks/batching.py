"""Cross-problem batching vs one problem at a time, for a step-level strategy.

Runs the same beam search over the same problems twice on the real CPU backend: once with
`run.concurrency=1` (each problem's steps go to the model alone) and once with all
problems concurrent (the scheduler batches the steps of every problem), and prints the
wall times side by side with their ratio.

    python benchmarks/batching.py                      # 64 arith problems, smollm2-135m
    python benchmarks/batching.py --problems 16 --backend scripted   # quick smoke run
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ttc.launch import compose
from ttc.runner import Runner


def run_once(overrides: list[str], concurrency: int, store: str) -> tuple[float, dict, float]:
    cfg = compose([*overrides, f"run.concurrency={concurrency}", f"store.url={store}"])
    t0 = time.perf_counter()
    outcome = Runner(cfg).run()
    return time.perf_counter() - t0, outcome.totals, outcome.batch_stats.mean


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--problems", type=int, default=64)
    ap.add_argument("--backend", default="hf")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--beam-width", type=int, default=2)
    ap.add_argument("--expansions", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=3)
    ap.add_argument("--step-tokens", type=int, default=32)
    args = ap.parse_args()

    overrides = [
        f"backend={args.backend}",
        "strategy=beam_search",
        f"strategy.beam_width={args.beam_width}",
        f"strategy.expansions={args.expansions}",
        f"strategy.max_steps={args.max_steps}",
        f"strategy.step_tokens={args.step_tokens}",
        "strategy.temperature=0.7",
        "reward=self_certainty",
        "task=arith",
        f"task.n_problems={args.problems}",
        "run.progress=false",
        "scheduler.max_batch_size=128",
    ]
    if args.backend == "hf":
        overrides.append(f"backend.model={args.model}")
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{Path(tmp) / 'bench.db'}"
        # warm-up: load the model and its caches once, outside the timings
        run_once([*overrides, "task.n_problems=1"], 1, store)
        rows = []
        modes = (("one problem at a time", 1), ("cross-problem batching", args.problems))
        for label, conc in modes:
            console.print(f"running: {label} ...")
            wall, totals, mean_batch = run_once(overrides, conc, store)
            rows.append((label, wall, totals, mean_batch))
    table = Table(title=f"beam search over {args.problems} problems ({args.backend})")
    for col in ("mode", "wall s", "generated tokens", "tokens/s", "mean batch", "accuracy"):
        table.add_column(col, justify="right")
    for label, wall, totals, mean_batch in rows:
        acc = totals["accuracy"]
        table.add_row(
            label,
            f"{wall:.1f}",
            str(totals["tokens"]),
            f"{totals['tokens'] / wall:.1f}",
            f"{mean_batch:.1f}",
            "-" if acc is None else f"{100 * acc:.1f}%",
        )
    console.print(table)
    ratio = rows[0][1] / rows[1][1]
    console.print(f"speed-up (wall-time ratio, sequential / batched): {ratio:.2f}x")


if __name__ == "__main__":
    main()
