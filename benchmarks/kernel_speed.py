"""Speed of the kernels/ ops: each Triton kernel against its torch reference, and the
shared-prefix attention against ordinary attention over duplicated prefixes.

Needs only torch and triton (the kernels folder is imported standalone, not through
ttc), so it runs as is on a GPU machine with nothing of ours installed:

    python benchmarks/kernel_speed.py                    # all cases, on CUDA
    python benchmarks/kernel_speed.py --only attention   # attention, sampling, stats, resampling
    TRITON_INTERPRET=1 python benchmarks/kernel_speed.py --smoke   # tiny sizes, any machine

Attention: 32 query heads over 8 KV heads of dim 128 in bf16, N rows sharing a prefix
of P tokens, each with its own suffix of 128 to 1024 tokens. The baseline is what a
backend without the kernel runs: PyTorch's scaled_dot_product_attention over a KV cache
that holds the prefix once per row. Bandwidth is the bytes the op must read at least
(the prefix and the suffixes once, the logits once...) over its time, as a fraction of
the device's peak memory bandwidth (a table of known devices, else --peak-gbps).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernels import attention, resampling, sampling, vocab_stats

PEAK_GBPS = {  # HBM / GDDR peak of common devices, GB/s
    "H200": 4800,
    "H100 SXM": 3350,
    "H100 PCIe": 2000,
    "H100": 3350,
    "A100-SXM4-80GB": 2039,
    "A100 80GB PCIe": 1935,
    "A100": 1555,
    "L40S": 864,
    "L4": 300,
    "A10G": 600,
    "RTX 4090": 1008,
}


def peak_gbps(override: float | None) -> float | None:
    if override:
        return override
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, value in PEAK_GBPS.items():
        if key.lower() in name.lower():
            return float(value)
    props = torch.cuda.get_device_properties(0)
    clock, bus = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    return 2 * clock * 1e3 * bus / 8 / 1e9 if clock and bus else None


def timed(fn: Callable[[], object], reps: int) -> float:
    """Median seconds of one call."""
    if torch.cuda.is_available():
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=10, rep=max(20, reps * 10))) / 1e3
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


class Report:
    def __init__(self, peak: float | None) -> None:
        self.peak = peak
        head = f"{'op':<12} {'case':<34} {'kernel ms':>10} {'baseline ms':>12} {'speedup':>8}"
        print(f"{head} {'GB/s':>8} {'of peak':>8}", flush=True)

    def row(self, op: str, case: str, t_kernel: float, t_base: float | None, nbytes: float) -> None:
        gbps = nbytes / t_kernel / 1e9
        frac = f"{gbps / self.peak:.0%}" if self.peak else "n/a"
        base = f"{t_base * 1e3:12.3f}" if t_base is not None else f"{'-':>12}"
        speed = f"{t_base / t_kernel:7.1f}x" if t_base is not None else f"{'-':>8}"
        print(
            f"{op:<12} {case:<34} {t_kernel * 1e3:10.3f} {base} {speed} {gbps:8.0f} {frac:>8}",
            flush=True,
        )


def bench_attention(report: Report, dev: str, smoke: bool, reps: int) -> None:
    q_heads, kv_heads, dim = (4, 2, 64) if smoke else (32, 8, 128)
    dtype = torch.bfloat16
    sizes = [(3, 64)] if smoke else [(n, p) for n in (16, 64, 256) for p in (1024, 4096, 16384)]
    s_lo, s_hi = (8, 32) if smoke else (128, 1024)
    gen = torch.Generator().manual_seed(0)
    for rows, prefix in sizes:
        lengths = torch.randint(s_lo, s_hi + 1, (rows,), generator=gen).to(dev)
        q = torch.randn(rows, q_heads, dim, device=dev, dtype=dtype)
        pk = torch.randn(kv_heads, prefix, dim, device=dev, dtype=dtype)
        pv = torch.randn_like(pk)
        sk = torch.randn(rows, kv_heads, s_hi, dim, device=dev, dtype=dtype)
        sv = torch.randn_like(sk)

        kernel = partial(
            attention.shared_prefix_attention, q, pk, pv, sk, sv, lengths, impl="triton"
        )
        # the baseline's KV cache: the prefix duplicated into every row, then the suffix
        k_all = torch.cat([pk.expand(rows, -1, -1, -1), sk], 2)
        v_all = torch.cat([pv.expand(rows, -1, -1, -1), sv], 2)
        pos = torch.arange(s_hi, device=dev)
        prefix_ok = torch.ones(rows, prefix, dtype=torch.bool, device=dev)
        mask = torch.cat([prefix_ok, pos < lengths[:, None]], 1)[:, None, None, :]
        duplicated = partial(
            torch.nn.functional.scaled_dot_product_attention,
            q.unsqueeze(2), k_all, v_all, attn_mask=mask, enable_gqa=True,
        )  # fmt: skip
        got = kernel().float()
        want = duplicated().squeeze(2).float()
        err = float((got - want).abs().max())
        if not err < 5e-2:
            raise SystemExit(f"attention N={rows} P={prefix}: kernel and baseline differ by {err}")
        t_k, t_b = timed(kernel, reps), timed(duplicated, reps)
        suffix_tokens = float(lengths.sum())
        nbytes = 2 * kv_heads * dim * 2 * (prefix + suffix_tokens) + 2 * q.numel() * 2
        case = f"N={rows} prefix={prefix} suffix<={s_hi}"
        report.row("attention", case, t_k, t_b, nbytes)


def bench_sampling(report: Report, dev: str, smoke: bool, reps: int) -> None:
    sizes = [(4, 1000)] if smoke else [(b, v) for b in (64, 256) for v in (49152, 262144)]
    for rows, vocab in sizes:
        logits = torch.randn(rows, vocab, device=dev) * 3
        temps = torch.full((rows,), 0.8, device=dev)
        params = sampling.SamplingParams(
            temperature=temps,
            top_k=torch.full((rows,), 50, device=dev, dtype=torch.long),
            top_p=torch.full((rows,), 0.9, device=dev),
            min_p=torch.full((rows,), 0.02, device=dev),
            want_logprobs=True,
        )
        u = torch.rand(rows, device=dev)
        t_k = timed(partial(sampling.sample, logits, params, u, impl="triton"), reps)
        t_r = timed(partial(sampling.sample, logits, params, u, impl="reference"), reps)
        report.row("sampling", f"B={rows} V={vocab} k=50 p=0.9 min_p", t_k, t_r, logits.numel() * 4)
        plain = sampling.SamplingParams(
            temps, params.top_k * 0, params.top_p * 0 + 1, params.min_p * 0, True
        )
        t_k = timed(partial(sampling.sample, logits, plain, u, impl="triton"), reps)
        t_r = timed(partial(sampling.sample, logits, plain, u, impl="reference"), reps)
        report.row("sampling", f"B={rows} V={vocab} temperature only", t_k, t_r, logits.numel() * 4)


def bench_stats(report: Report, dev: str, smoke: bool, reps: int) -> None:
    sizes = [(4, 1000)] if smoke else [(b, v) for b in (64, 256) for v in (49152, 262144)]
    for rows, vocab in sizes:
        logits = torch.randn(rows, vocab, device=dev, dtype=torch.bfloat16)
        t_k = timed(partial(vocab_stats.vocab_stats, logits, impl="triton"), reps)
        t_r = timed(partial(vocab_stats.vocab_stats, logits, impl="reference"), reps)
        report.row("vocab_stats", f"B={rows} V={vocab} bf16", t_k, t_r, logits.numel() * 2)


def bench_resampling(report: Report, dev: str, smoke: bool, reps: int) -> None:
    sizes = [(3, 16)] if smoke else [(64, 64), (1024, 64), (1024, 256)]
    schemes: tuple[resampling.Scheme, ...] = ("systematic", "residual")
    for problems, particles in sizes:
        w = torch.rand(problems, particles, device=dev)
        u = torch.rand(problems, particles, device=dev, dtype=torch.float64)
        for scheme in schemes:
            kernel = partial(resampling.resample, w, u, scheme=scheme, impl="triton")
            ref = partial(resampling.resample, w, u, scheme=scheme, impl="reference")
            t_k, t_r = timed(kernel, reps), timed(ref, reps)
            case = f"{scheme} P={problems} M={particles}"
            report.row("resampling", case, t_k, t_r, w.numel() * 4 + u.numel() * 8)


BENCHES = {
    "attention": bench_attention,
    "sampling": bench_sampling,
    "stats": bench_stats,
    "resampling": bench_resampling,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(BENCHES), action="append")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CPU interpreter)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--peak-gbps", type=float, default=None, help="device peak bandwidth")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit(
            "benchmarks/kernel_speed.py needs a CUDA device (or TRITON_INTERPRET=1 --smoke)"
        )
    if not cuda and not args.smoke:
        raise SystemExit("without a CUDA device only --smoke sizes run (the interpreter is slow)")
    dev = "cuda" if cuda else "cpu"
    import triton

    name = torch.cuda.get_device_name() if cuda else "CPU (Triton interpreter)"
    peak = peak_gbps(args.peak_gbps)
    print(f"device: {name}; peak {peak or 'unknown'} GB/s; torch {torch.__version__}, "
          f"triton {triton.__version__}", flush=True)  # fmt: skip
    report = Report(peak)
    for key in args.only or list(BENCHES):
        BENCHES[key](report, dev, args.smoke, 1 if args.smoke else args.reps)
    if not args.smoke and (not args.only or "attention" in args.only):
        print("targets: attention >= 4x over duplicated prefixes at N=64 prefix=4096; "
              ">= 70% of peak bandwidth", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
