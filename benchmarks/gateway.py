"""What `ttc serve` adds to a request, and how its throughput grows with clients.

1. Overhead: the same request (self-consistency over `--samples` samples) sent to the
   gateway on 127.0.0.1 one at a time, against the backend called directly for the
   same samples (one `generate_batch` call, as the gateway's search makes). The backend
   is the scripted test double, whose generation costs next to nothing, so the
   difference is the gateway: HTTP, validation, the search's bookkeeping, grading and
   the store's transaction. Median and p95 per request, for each way of storing:
   the default (`serve.sqlite_synchronous=normal`: a commit is a write to the OS),
   a disk sync at every commit (`full`), and `serve.write_behind=true`.
2. Throughput with 1, 16 and 64 concurrent clients, on the scripted backend with a fixed
   cost per batch (`--batch-ms`, like a model's forward pass): requests per second,
   latency, the backend's mean batch size (the requests of concurrent clients share
   batches) and the problems per store transaction (group commit), beside the same
   server committing one request per transaction with a disk sync each (how it stored
   before group commit), and the one-request-per-batch rate of the direct backend.

    python benchmarks/gateway.py                    # ~1 minute
    python benchmarks/gateway.py --requests 400 --batch-ms 50
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# The scripted backend is ttc's test double; its plugin module lives with the tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("TTC_PLUGIN_MODULES", "doubles")

import httpx
from rich.console import Console
from rich.table import Table

from ttc.serve.server import BackgroundServer, build, compose_serve
from ttc.types import GenerateRequest, Problem, Sampling

BASE = [
    "backend=scripted",
    "task=synthetic",
    "reward=none",
    "strategy=self_consistency",
    "run.progress=false",
]


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(int(q * len(xs)), len(xs) - 1)]


def body(i: int, samples: int) -> dict:
    return {
        "model": "ttc/self_consistency",
        "messages": [{"role": "user", "content": f"Problem {i} answer={10 + i % 80}"}],
        "n": samples,
        "seed": i,
    }


OVERHEAD_MODES = {
    "stored before the answer": [],
    "same, disk sync every commit": ["serve.sqlite_synchronous=full"],
    "write-behind": ["serve.write_behind=true"],
}
"""Ways of storing a request, as `serve.*` overrides."""


def overhead(store: str, *, requests: int, samples: int, mode: list[str]) -> dict[str, float]:
    overrides = [*BASE, f"store.url={store}", "serve.port=0", *mode]
    app, run, serve = build(compose_serve(overrides))
    with BackgroundServer(app, serve) as url, httpx.Client(base_url=url, timeout=60) as http:
        for i in range(20):  # warm-up
            http.post("/chat/completions", json=body(i, samples)).raise_for_status()
        backend = run.backend
        gateway, direct = [], []
        for i in range(requests):
            t0 = time.perf_counter()
            r = http.post("/chat/completions", json=body(i, samples))
            gateway.append(time.perf_counter() - t0)
            r.raise_for_status()
            problem = Problem(id=str(i), prompt=body(i, samples)["messages"][0]["content"])
            prompt = backend.render(problem)
            t0 = time.perf_counter()
            sampling = Sampling(n=samples, temperature=0.8, max_tokens=512, seed=i)
            req = GenerateRequest(prompt, tuple(backend.encode(prompt)), sampling)
            backend.generate_batch([req])
            direct.append(time.perf_counter() - t0)
    extra = [g - d for g, d in zip(gateway, direct, strict=True)]
    return {
        "gateway_p50": statistics.median(gateway) * 1e3,
        "gateway_p95": percentile(gateway, 0.95) * 1e3,
        "direct_p50": statistics.median(direct) * 1e3,
        "direct_p95": percentile(direct, 0.95) * 1e3,
        "overhead_p50": statistics.median(extra) * 1e3,
        "overhead_p95": percentile(extra, 0.95) * 1e3,
    }


def throughput(
    store: str, clients: int, *, requests: int, samples: int, batch_ms: float, group: bool
) -> dict:
    """`group=False`: one request per transaction, each synced to disk (the store's way
    before group commit), for the side-by-side rows."""
    overrides = [
        *BASE,
        f"store.url={store}",
        "serve.port=0",
        f"backend.delay_s={batch_ms / 1000}",
        f"run.concurrency={max(clients, 1)}",
        f"scheduler.max_batch_size={max(clients, 1)}",
    ]
    if not group:
        overrides.append("serve.sqlite_synchronous=full")
    app, run, serve = build(compose_serve(overrides))
    latencies: list[float] = []

    async def client(http: httpx.AsyncClient, todo: list[int]) -> None:
        while todo:
            i = todo.pop()
            t0 = time.perf_counter()
            r = await http.post("/chat/completions", json=body(i, samples))
            r.raise_for_status()
            latencies.append(time.perf_counter() - t0)

    async def drive(url: str) -> float:
        # One connection per client, each in its own pool: httpx's pool scans all of its
        # connections on every request, which at 64 connections in one pool made the
        # benchmark's own client the bottleneck (it measured httpx, not the gateway).
        one = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with contextlib.AsyncExitStack() as stack:
            https = [
                await stack.enter_async_context(
                    httpx.AsyncClient(base_url=url, timeout=300, limits=one, verify=False)
                )
                for _ in range(clients)
            ]
            todo = list(range(requests))
            t0 = time.perf_counter()
            await asyncio.gather(*(client(http, todo) for http in https))
            return time.perf_counter() - t0

    with BackgroundServer(app, serve) as url:
        assert run.writer is not None
        if not group:
            run.writer.max_batch = 1
        wall = asyncio.run(drive(url))
        sizes = list(run.batch_stats.sizes)
        commits = list(run.writer.batch_sizes)
    return {
        "clients": clients,
        "commit": "grouped" if group else "1 per request, synced",
        "per_commit": sum(commits) / len(commits) if commits else 0.0,
        "rps": requests / wall,
        "p50": statistics.median(latencies) * 1e3,
        "p95": percentile(latencies, 0.95) * 1e3,
        "mean_batch": sum(sizes) / len(sizes) if sizes else 0.0,
        "direct_rps": 1000.0 / batch_ms if batch_ms else float("inf"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=200, help="requests per measurement")
    ap.add_argument("--samples", type=int, default=4, help="samples per request")
    ap.add_argument("--batch-ms", type=float, default=20.0, help="backend cost per batch")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    args = ap.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        table = Table(title=f"per request, {args.samples} samples, one at a time (ms)")
        for col in ("path", "median", "p95"):
            table.add_column(col, justify="right")
        for k, (mode, extra) in enumerate(OVERHEAD_MODES.items()):
            console.print(f"overhead ({mode}): {args.requests} requests ...")
            o = overhead(
                f"sqlite:///{Path(tmp) / f'o{k}.db'}",
                requests=args.requests,
                samples=args.samples,
                mode=extra,
            )
            if k == 0:
                table.add_row(
                    "backend called directly", f"{o['direct_p50']:.3f}", f"{o['direct_p95']:.3f}"
                )
            table.add_row(f"gateway, {mode}", f"{o['gateway_p50']:.2f}", f"{o['gateway_p95']:.2f}")
            table.add_row(
                f"overhead, {mode}", f"{o['overhead_p50']:.2f}", f"{o['overhead_p95']:.2f}"
            )
        console.print(table)
        rows = []
        for c in args.clients:
            for group in (True, False):
                what = "grouped commits" if group else "one synced commit per request"
                console.print(f"throughput: {c} concurrent clients, {what} ...")
                rows.append(
                    throughput(
                        f"sqlite:///{Path(tmp) / f't{c}{group}.db'}",
                        c,
                        requests=args.requests,
                        samples=args.samples,
                        batch_ms=args.batch_ms,
                        group=group,
                    )
                )
    table = Table(title=f"throughput, {args.batch_ms:g} ms per backend batch")
    for col in (
        "clients",
        "store commits",
        "req/s",
        "vs 1 client",
        "p50 ms",
        "p95 ms",
        "mean batch",
        "requests/commit",
        "direct req/s*",
    ):
        table.add_column(col, justify="right")
    base = {r["commit"]: r["rps"] for r in rows if r["clients"] == rows[0]["clients"]}
    for r in rows:
        table.add_row(
            str(r["clients"]),
            r["commit"],
            f"{r['rps']:.1f}",
            f"{r['rps'] / base[r['commit']]:.1f}x",
            f"{r['p50']:.1f}",
            f"{r['p95']:.1f}",
            f"{r['mean_batch']:.1f}",
            f"{r['per_commit']:.1f}",
            f"{r['direct_rps']:.1f}",
        )
    console.print(table)
    console.print("* one request per backend batch, no gateway: 1000 / batch-ms")


if __name__ == "__main__":
    main()
