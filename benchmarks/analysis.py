"""How long `ttc analyze` takes on a large store.

Generates a synthetic store (ttc.analysis.synthetic, known success probabilities) of
`--problems` problems x 10 configurations x 8 budgets (sampling strategies with 1-16
samples, step-level stand-ins with 1-8 beams, under two reward-noise levels), then times
each stage of the analysis the report runs: load, estimates with bootstrap intervals,
fits, the per-difficulty policy, the plots and the HTML page. The target: under 60 s on
2 cores for 500 x 10 x 8.

    python benchmarks/analysis.py                      # 500 problems (the target size)
    python benchmarks/analysis.py --problems 100       # a quick look
    python benchmarks/analysis.py --store runs/bench.db  # keep (and reuse) the store
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ttc.analysis import load, points
from ttc.analysis.analysis import analyze
from ttc.analysis.estimators import per_problem
from ttc.analysis.policy import candidates, fit_policy
from ttc.analysis.report import render
from ttc.analysis.synthetic import SyntheticEnv
from ttc.store import Store

SAMPLE_BUDGETS = (1, 2, 3, 4, 6, 8, 12, 16)
BEAM_BUDGETS = (1, 2, 3, 4, 5, 6, 7, 8)
CONFIGS = (
    ("best_of_n", "rm_a"),
    ("best_of_n", "rm_b"),
    ("self_consistency", "rm_a"),
    ("self_consistency", "rm_b"),
    ("best_of_majority", "rm_a"),
    ("best_of_majority", "rm_b"),
    ("beam_search", "rm_a"),
    ("beam_search", "rm_b"),
    ("dvts", "rm_a"),
    ("dvts", "rm_b"),
)


def generate(url: str, problems: int, console: Console) -> int:
    store = Store(url)
    envs = {
        "rm_a": SyntheticEnv.spread(problems, seed=1, noise=0.1),
        "rm_b": SyntheticEnv.spread(problems, seed=1, noise=0.25),
    }
    t0 = time.perf_counter()
    runs = 0
    for strategy, reward in CONFIGS:
        env = envs[reward]
        for size in BEAM_BUDGETS if strategy in ("beam_search", "dvts") else SAMPLE_BUDGETS:
            if strategy in ("beam_search", "dvts"):
                env.write_run(store, strategy=strategy, width=size, reward=reward, bulk=True)
            else:
                env.write_run(store, strategy=strategy, n=size, reward=reward, bulk=True)
            runs += 1
        console.print(
            f"  wrote {strategy} / {reward}: {runs} runs, {time.perf_counter() - t0:.1f}s",
            highlight=False,
        )
    store.close()
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--problems", type=int, default=500)
    ap.add_argument("--store", help="SQLite file to write (reused when it exists)")
    args = ap.parse_args()
    console = Console()
    tmp = tempfile.TemporaryDirectory()
    path = Path(args.store) if args.store else Path(tmp.name) / "bench.db"
    url = f"sqlite:///{path}"
    if not path.exists():
        console.print(
            f"generating {args.problems} problems x {len(CONFIGS)} configurations x 8 budgets"
        )
        generate(url, args.problems, console)
    stages: list[tuple[str, float]] = []

    def timed(name: str, fn):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        out = fn()
        stages.append((name, time.perf_counter() - t0))
        console.print(f"  {name}: {stages[-1][1]:.2f}s", highlight=False)
        return out

    tables = timed("load (runs, results, samples graded)", lambda: load(url))
    pp = timed("pass@k / maj@k / best@k per problem", lambda: per_problem(tables))
    timed("points with bootstrap CIs", lambda: points(tables, per_problem_values=pp))
    cands = timed("policy candidates", lambda: candidates(tables, pp=pp))
    timed("per-difficulty policy fit", lambda: fit_policy(tables, cands=cands))
    total0 = time.perf_counter()
    full = analyze(tables, measure="agreement")
    html = render(full)
    stages.append(("whole report (analyze + plots + HTML)", time.perf_counter() - total0))
    table = Table(
        title=(
            f"analysis of {len(tables.runs)} runs, {len(tables.results)} problem "
            f"results, {len(tables.nodes)} samples ({len(html) // 1024} KiB report)"
        )
    )
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for name, seconds in stages:
        table.add_row(name, f"{seconds:.2f}")
    end_to_end = stages[0][1] + stages[-1][1]
    table.add_row("load + whole report", f"{end_to_end:.2f}")
    console.print(table)
    console.print(
        f"target: < 60 s on 2 cores; measured {end_to_end:.1f} s ({60 / end_to_end:.1f}x under)"
    )


if __name__ == "__main__":
    main()
