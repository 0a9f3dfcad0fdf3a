"""Every search strategy on a real model at equal budgets.

Runs each strategy on the `arith` task with the real `smollm2-135m` model (backend `hf`)
under budgets of 4, 8 and 16 samples-equivalent (the token budget of that many whole
samples of `--sample-tokens` tokens, with each strategy's width sized to the budget),
with the `self_certainty` reward and, where it is installed, the `rule` reward, and
prints accuracy, generated tokens and reward calls per problem.

    python benchmarks/strategies.py                                 # 4 problems: a smoke run
    python benchmarks/strategies.py --problems 64 --levels 1 2      # a real comparison
    python benchmarks/strategies.py --strategies best_of_n particle_filter --budgets 8
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ttc.launch import compose
from ttc.registry import get_registry
from ttc.runner import Runner
from ttc.store import Store

STRATEGIES = (
    "best_of_n",
    "self_consistency",
    "best_of_majority",
    "adaptive_consistency",
    "beam_search",
    "dvts",
    "particle_filter",
    "particle_gibbs",
    "a_star",
    "cascade",
    "rebase",
    "revision",
    "solve_detect_verify",
)
STEP_STRATEGIES = {
    "beam_search",
    "dvts",
    "particle_filter",
    "particle_gibbs",
    "a_star",
    "rebase",
    "solve_detect_verify",
}


def sized(strategy: str, budget: int, *, step_tokens: int, sample_tokens: int) -> list[str]:
    """Overrides that make a strategy spend about `budget` samples' worth of compute."""
    half = max(budget // 2, 1)
    width = {
        "best_of_n": [f"strategy.n={budget}", f"strategy.max_tokens={sample_tokens}"],
        "self_consistency": [f"strategy.n={budget}", f"strategy.max_tokens={sample_tokens}"],
        "best_of_majority": [f"strategy.n={budget}", f"strategy.max_tokens={sample_tokens}"],
        "adaptive_consistency": [
            f"strategy.max_samples={budget}",
            f"strategy.max_tokens={sample_tokens}",
        ],
        "beam_search": [f"strategy.beam_width={half}", "strategy.expansions=2"],
        "dvts": [f"strategy.n={budget}", "strategy.width=2"],
        "particle_filter": [f"strategy.particles={budget}"],
        "particle_gibbs": [f"strategy.particles={max(half, 2)}", "strategy.iterations=2"],
        "a_star": ["strategy.expansions=2", f"strategy.max_depth={sample_tokens // step_tokens}"],
        # small model = the run's, large = gemma3-270m (a base model: few-shot examples,
        # and its answer ends where it would start a question of its own)
        "cascade": [
            f"strategy.n={half}",
            f"strategy.max_tokens={sample_tokens}",
            "strategy.large_model=gemma3-270m",
            "strategy.chunk_tokens=16",
            "strategy.large_tokens=16",
            'strategy.stop=["Question:"]',
            "task.few_shot=2",
        ],
        "rebase": [f"strategy.width={budget}"],
        # budget attempts in chains of 2 (the sequential/parallel ratio 2 : budget/2)
        "revision": [
            f"strategy.attempts={budget}",
            f"strategy.chain_length={min(2, budget)}",
            f"strategy.max_tokens={sample_tokens}",
        ],
        "solve_detect_verify": [f"strategy.rounds={max(budget // 2, 1)}"],
    }[strategy]
    if strategy in STEP_STRATEGIES:
        width.append(f"strategy.step_tokens={step_tokens}")
        if strategy != "a_star":
            width.append(f"strategy.max_steps={sample_tokens // step_tokens}")
    return width


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--problems", type=int, default=4)
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--budgets", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    ap.add_argument("--rewards", nargs="+", default=None, help="default: self_certainty, rule")
    ap.add_argument("--backend", default="hf")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--sample-tokens", type=int, default=96, help="tokens of one whole sample")
    ap.add_argument("--step-tokens", type=int, default=32, help="tokens of one step at most")
    ap.add_argument("--temperature", type=float, default=0.7)
    args = ap.parse_args()

    known = set(get_registry().names("reward"))
    rewards = args.rewards or [r for r in ("self_certainty", "rule") if r in known]
    console = Console()
    missing = sorted(set(rewards) - known)
    if missing:
        console.print(f"[yellow]skipping rewards that are not installed: {', '.join(missing)}")
        rewards = [r for r in rewards if r in known]
    levels = "[" + ",".join(map(str, args.levels)) + "]"
    base = [
        f"backend={args.backend}",
        "task=arith",
        f"task.n_problems={args.problems}",
        f"task.levels={levels}",
        "run.progress=false",
        "scheduler.max_batch_size=128",
        f"strategy.temperature={args.temperature}",
    ]
    if args.backend == "hf":
        base.append(f"backend.model={args.model}")

    table = Table(title=f"strategies on arith (levels {levels}, {args.problems} problems)")
    cols = (
        "strategy",
        "reward",
        "budget",
        "accuracy",
        "pass@1",
        "tokens",
        "reward calls",
        "wall s",
    )
    for col in cols:
        table.add_column(col, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        store = Store(url)
        for reward in rewards:
            for budget in args.budgets:
                for strategy in args.strategies:
                    overrides = [
                        *base,
                        f"strategy={strategy}",
                        *sized(
                            strategy,
                            budget,
                            step_tokens=args.step_tokens,
                            sample_tokens=args.sample_tokens,
                        ),
                        f"reward={reward}",
                        f"budget.tokens={budget * args.sample_tokens}",
                        f"store.url={url}",
                    ]
                    console.print(f"running {strategy} / {reward} / budget {budget} ...")
                    t0 = time.perf_counter()
                    outcome = Runner(compose(overrides)).run()
                    wall = time.perf_counter() - t0
                    rows = store.results(outcome.run_id)
                    n = max(len(rows), 1)
                    graded = [r["correct"] for r in rows if r.get("correct") is not None]
                    acc = sum(map(bool, graded)) / len(graded) if graded else None
                    # pass@1 of the same run: mean correctness of its leaves (samples)
                    p1 = [r["pass_at_1"] for r in rows if r.get("pass_at_1") is not None]
                    pass1 = sum(p1) / len(p1) if p1 else None
                    row = (
                        strategy,
                        reward,
                        str(budget),
                        "-" if acc is None else f"{100 * acc:.1f}%",
                        "-" if pass1 is None else f"{100 * pass1:.1f}%",
                        f"{sum(r.get('tokens') or 0 for r in rows) / n:.0f}",
                        f"{sum(r.get('reward_calls') or 0 for r in rows) / n:.1f}",
                        f"{wall:.1f}",
                    )
                    table.add_row(*row)
                    # each row as it is measured, so a long sweep shows results early
                    console.print("  " + " | ".join(row), highlight=False)
        store.close()
    console.print(table)
    console.print(
        "tokens and reward calls are per problem; budget = samples-equivalent; pass@1 = "
        "mean correctness of the run's leaves (problems without a leaf are left out)"
    )


if __name__ == "__main__":
    main()
