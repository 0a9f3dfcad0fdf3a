"""How a run's wall time shrinks with the actors of `run.executor=ray`.

The same 64-problem step-level run (beam search, 4 beams, 3 steps each, self-scored by
the synthetic reward) with 1, 2 and 4 actors of a local Ray cluster, beside the local
executor. Each actor has its own backend: the scripted test double with a fixed cost per
generated token (`--token-ms`), i.e. an engine of fixed throughput, as when every actor
owns a GPU. Each actor solves `--per-actor` problems at once (an engine's batch
capacity). Printed per row: the run's wall time as the store measures it (first
problem's start to last one's end), the wall time of the whole `Runner.run()` (actors'
start-up included), the speedup over one actor and the scaling efficiency (speedup /
actors).

    python benchmarks/scale_out.py                   # ~1-2 minutes
    python benchmarks/scale_out.py --token-ms 0.5 --problems 128

On a machine with few cores the actors also share the CPUs that run their search,
grading and store writes; where the CPU work per token is no longer small next to
`--token-ms`, the efficiency falls for that reason, not because of the executor.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

# The scripted backend is ttc's test double; its plugin module lives with the tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("TTC_PLUGIN_MODULES", "doubles")

from rich.console import Console
from rich.table import Table

from ttc.launch import compose
from ttc.runner import Runner


def job(args: argparse.Namespace, url: str) -> list[str]:
    return [
        "backend=scripted",
        "task=synthetic",
        "reward=synthetic",
        "run.progress=false",
        f"store.url={url}",
        "strategy=beam_search",
        "strategy.beam_width=4",
        f"task.n_problems={args.problems}",
        f"backend.token_delay_s={args.token_ms / 1000}",
        "backend.steps=3",
        "scheduler.max_wait_ms=1",
    ]


def measure(overrides: list[str]) -> tuple[float, float, dict[str, float]]:
    t0 = time.perf_counter()
    outcome = Runner(compose(overrides)).run()
    total = time.perf_counter() - t0
    assert outcome.status == "finished" and outcome.totals["errors"] == 0
    return float(outcome.totals["wall_s"]), total, outcome.totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--token-ms", type=float, default=0.5, help="backend cost per token")
    parser.add_argument("--per-actor", type=int, default=16, help="problems an actor holds")
    parser.add_argument("--cpus", type=int, default=max(os.cpu_count() or 2, 4))
    args = parser.parse_args()

    import ray

    tests = str(Path(__file__).resolve().parents[1] / "tests")  # the actors load it too
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (tests, os.environ.get("PYTHONPATH")) if p
    )
    console = Console()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'scale.db'}"
        base = job(args, url)
        wall, total, totals = measure([*base, f"run.concurrency={args.per_actor}"])
        rows.append(("local executor", 0, wall, total, totals["tokens"]))
        for n in args.actors:
            overrides = [
                *base,
                "run.executor=ray",
                f"ray.actors_per_node={n}",
                f"ray.concurrency_per_actor={args.per_actor}",
                "ray.chunk_size=4",
                f"ray.cpus_per_actor={args.cpus / max(args.actors) / 2}",
            ]
            wall, total, totals = measure(overrides)
            rows.append((f"ray, {n} actor{'s' * (n > 1)}", n, wall, total, totals["tokens"]))
    ray.shutdown()

    one = next(r for r in rows if r[1] == 1) if 1 in args.actors else rows[0]
    table = Table(
        title=f"{args.problems} problems, beam search, {args.token_ms} ms/token per engine, "
        f"{args.per_actor} problems per actor, {os.cpu_count()} CPU cores"
    )
    for col in ("executor", "run wall s", "with start-up s", "tokens", "speedup", "efficiency"):
        table.add_column(col, justify="left" if col == "executor" else "right")
    for name, n, wall, total, tokens in rows:
        speedup = one[2] / wall if wall else 0.0
        eff = f"{speedup / n:.2f}" if n else "-"
        table.add_row(name, f"{wall:.2f}", f"{total:.2f}", f"{tokens:,}", f"{speedup:.2f}x", eff)
    console.print(table)


if __name__ == "__main__":
    main()
