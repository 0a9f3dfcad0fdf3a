"""Flow strategies at equal NFE budgets on the digits rectified-flow model.

For every NFE budget (per sample set) and strategy (best-of-N over ODE samples, particle
sampling over the linear SDE and over the VP-SDE, rollover budget forcing over the
VP-SDE), it solves "generate a digit of class c" for every class, `--per-class` times,
with the unconditional model steered only by the classifier reward. It prints the mean
reward (95% bootstrap CI) and the success rate (the SVM judge sees class c; 95% Wilson
CI), checks the paper's ordering (rbf >= particle_vp_sde >= particle_sde >= best_of_n),
and draws one PNG grid of the chosen samples per budget (rows: classes; one panel per
strategy). The model trains on first use (about a minute on 2 cores) and is cached.

    python benchmarks/flow.py                                # ~2-4 minutes on 2 cores
    python benchmarks/flow.py --budgets 50 100 --per-class 3 --out runs/flow
    python benchmarks/flow.py --store sqlite:///runs/ttc.db  # also keep every run
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from ttc.flow.budget import FlowBudget
from ttc.flow.model import (
    DEFAULT_SPEC,
    TINY_SPEC,
    TorchVelocity,
    describe,
    load_or_train,
    to_pixels,
)
from ttc.flow.registry import build
from ttc.flow.reward import DigitJudge, DigitReward
from ttc.flow.runner import FlowResult, digit_problems, record_flow_run, solve_flow

STRATEGIES = [
    ("best_of_n", "fixed"),
    ("particle_sde", "fixed"),
    ("particle_vp_sde", "fixed"),
    ("rbf", "rollover"),
]


def bootstrap_ci(values: np.ndarray, *, seed: int = 0, draws: int = 2000) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(draws, len(values)), replace=True).mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)


def wilson_ci(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def summarise(results: list[FlowResult]) -> dict[str, Any]:
    rewards = np.array([r.reward if r.reward is not None else 0.0 for r in results])
    wins = sum(bool(r.success) for r in results)
    return {
        "reward": float(rewards.mean()),
        "reward_ci": bootstrap_ci(rewards),
        "success": wins / len(results),
        "success_ci": wilson_ci(wins, len(results)),
        "nfes": float(np.mean([r.spent.nfes for r in results])),
        "max_nfes": max(r.spent.nfes for r in results),
        "seconds": float(sum(r.spent.seconds for r in results)),
    }


def draw_grid(path: Path, nfes: int, panels: dict[str, list[FlowResult]], per_class: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = max(2.4, 0.45 * per_class + 0.8)
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), 7))
    for ax, (name, results) in zip(np.atleast_1d(axes), panels.items(), strict=True):
        canvas = np.zeros((10 * 9, per_class * 9))
        for r in results:
            c, i = r.problem.metadata["target"], int(r.problem.id.rsplit("-", 1)[1])
            if r.image is not None:
                canvas[c * 9 : c * 9 + 8, i * 9 : i * 9 + 8] = to_pixels(r.image).reshape(8, 8)
        ax.imshow(canvas, cmap="gray_r", vmin=0, vmax=16)
        wins = sum(bool(r.success) for r in results)
        ax.set_title(f"{name}\nsuccess {wins}/{len(results)}", fontsize=9)
        ax.set_yticks([c * 9 + 3.5 for c in range(10)], [str(c) for c in range(10)])
        ax.set_xticks([])
    fig.suptitle(f"chosen samples at {nfes} NFEs (rows: asked class)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--budgets", type=int, nargs="+", default=[50, 100, 200, 500])
    ap.add_argument("--per-class", type=int, default=5, help="problems per digit class")
    ap.add_argument("--nfes-per-sample", type=int, default=10, help="timesteps T")
    ap.add_argument("--conditional", action="store_true", help="tell the network the class")
    ap.add_argument("--out", type=Path, default=Path("runs/flow"))
    ap.add_argument("--store", default=None, help="SQLAlchemy URL to record every run in")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="the tests' tiny model (a smoke run)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    console = Console()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with console.status("loading (or training) the digits flow model ...") as status:
        spec = TINY_SPEC if args.tiny else DEFAULT_SPEC
        net = load_or_train(
            spec,
            progress=lambda s, loss: status.update(f"training step {s}: loss {loss:.3f}"),
        )
    console.print(f"model ready in {time.perf_counter() - start:.1f} s")
    model, reward, judge = TorchVelocity(net), DigitReward(), DigitJudge()
    problems = digit_problems(range(10), per_class=args.per_class)
    store = None
    if args.store:
        from ttc.store.store import open_store

        store = open_store(args.store)

    rows: list[dict[str, Any]] = []
    for nfes in args.budgets:
        panels: dict[str, list[FlowResult]] = {}
        for name, allocator in STRATEGIES:
            with console.status(f"{name} at {nfes} NFEs ..."):
                results = solve_flow(
                    build("strategy", name, nfes_per_sample=args.nfes_per_sample),
                    problems,
                    model=model,
                    reward=reward,
                    judge=judge,
                    allocator=build("allocator", allocator, FlowBudget(nfes=nfes)),
                    seed=args.seed,
                    conditional=args.conditional,
                )
            assert all(r.spent.nfes <= nfes for r in results)
            panels[name] = results
            rows.append({"strategy": name, "budget": nfes, **summarise(results)})
            if store is not None:
                record_flow_run(
                    store,
                    results,
                    strategy=name,
                    model=describe(spec)["name"],
                    config={"budget": {"nfes": nfes}, "allocator": allocator, "bench": "flow"},
                    name=f"flow-bench {name} {nfes}",
                )
        draw_grid(args.out / f"grid_{nfes}.png", nfes, panels, args.per_class)

    table = Table(title=f"flow strategies at equal NFE budgets ({len(problems)} problems each)")
    for col in ("budget", "strategy", "reward (95% CI)", "success (95% CI)", "NFEs used", "s"):
        table.add_column(col, justify="right" if col != "strategy" else "left")
    for r in rows:
        lo, hi = r["reward_ci"]
        slo, shi = r["success_ci"]
        table.add_row(
            str(r["budget"]),
            r["strategy"],
            f"{r['reward']:.3f} [{lo:.3f}, {hi:.3f}]",
            f"{r['success']:.2f} [{slo:.2f}, {shi:.2f}]",
            f"{r['nfes']:.0f} (max {r['max_nfes']})",
            f"{r['seconds']:.1f}",
        )
    console.print(table)
    order = ["rbf", "particle_vp_sde", "particle_sde", "best_of_n"]
    for nfes in args.budgets:
        by = {r["strategy"]: r["reward"] for r in rows if r["budget"] == nfes}
        holds = all(by[a] >= by[b] for a, b in itertools.pairwise(order))
        ranked = " > ".join(sorted(by, key=lambda k: -by[k]))
        console.print(f"{nfes} NFEs: by reward {ranked}; paper's ordering holds: {holds}")
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    console.print(f"grids and results.json in {args.out}/")


if __name__ == "__main__":
    main()
