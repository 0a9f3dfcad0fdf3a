"""Throughput of the hf backend against transformers' `generate`, measured in one run.

Workload: P chat prompts x N samples x T new tokens (default 16 x 8 x 128) on
SmolLM2-135M-Instruct. The baseline calls `model.generate` once per prompt with
`num_return_sequences=N`, as a straightforward best-of-N loop would; the backend gets all
P requests in one `generate_batch`. Both sample with the same settings (temperature 0.7,
no top-k/top-p) on the same loaded model, and both count a sequence's tokens up to and
including its end token, so tokens/s compares the useful work done.

    python benchmarks/hf_backend.py [--prompts 16] [--samples 8] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

QUESTIONS = [
    "What is 17 times 23?",
    "Name three prime numbers greater than 50.",
    "Explain in two sentences why the sky is blue.",
    "Write a haiku about autumn leaves.",
    "If a train travels 60 km in 45 minutes, what is its speed in km/h?",
    "What is the capital of Australia, and why is it not Sydney?",
    "Give a short definition of entropy.",
    "Solve for x: 3x + 7 = 22.",
    "List four uses of a paperclip.",
    "What is the derivative of x^3 + 2x?",
    "Summarise the plot of Romeo and Juliet in one sentence.",
    "How many minutes are there in a week?",
    "Translate 'good morning' into French and Spanish.",
    "What is the sum of the first ten positive integers?",
    "Describe a cat to someone who has never seen one.",
    "Why do we have leap years?",
]


@dataclass
class Measured:
    label: str
    sequences: int
    tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from ttc.backends.hf import HFBackend, HFBackendConfig, PrefixCache
    from ttc.types import GenerateRequest, Problem, Sampling

    console = Console()
    backend = HFBackend(HFBackendConfig(model=args.model, device=args.device))
    backend.load()
    loaded = backend._require()
    model, device = loaded.model, loaded.device
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.prompts)]
    prompts = [
        backend.encode(
            backend.render(Problem(id=str(i), messages=({"role": "user", "content": q},)))
        )
        for i, q in enumerate(questions)
    ]
    eos = sorted(backend.eos_token_ids)
    console.print(
        f"[bold]{args.model}[/] on {device} ({loaded.dtype}), torch threads "
        f"{torch.get_num_threads()}: {args.prompts} prompts x {args.samples} samples x "
        f"{args.max_tokens} tokens"
    )

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def run_generate(ids_list: list[list[int]], max_tokens: int) -> tuple[int, int]:
        tokens = sequences = 0
        for i, ids in enumerate(ids_list):
            torch.manual_seed(i)
            out = model.generate(
                torch.tensor([ids], device=device),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=device),
                do_sample=True,
                temperature=args.temperature,
                top_k=0,
                top_p=1.0,
                num_return_sequences=args.samples,
                max_new_tokens=max_tokens,
                eos_token_id=eos,
                pad_token_id=eos[0],
            )
            for row in out[:, len(ids) :].tolist():
                ends = [j for j, t in enumerate(row) if t in backend.eos_token_ids]
                tokens += ends[0] + 1 if ends else len(row)
                sequences += 1
        return tokens, sequences

    def run_backend(ids_list: list[list[int]], max_tokens: int) -> tuple[int, int]:
        backend.prefix_cache = PrefixCache(backend.config.prefix_cache_tokens)  # cold
        sampling = [
            Sampling(n=args.samples, temperature=args.temperature, max_tokens=max_tokens, seed=i)
            for i in range(len(ids_list))
        ]
        requests = [
            GenerateRequest("", tuple(ids), s) for ids, s in zip(ids_list, sampling, strict=True)
        ]
        results = backend.generate_batch(requests)
        return (
            sum(r.usage.completion_tokens for r in results),
            sum(len(r.generations) for r in results),
        )

    with torch.inference_mode():
        # Warm up both paths (allocator, oneDNN/cuBLAS kernels) on a small workload.
        run_generate(prompts[:1], 8)
        run_backend(prompts[:2], 8)

        measured = []
        for label, fn in (
            ("transformers generate, per prompt", run_generate),
            ("hf backend, one generate_batch", run_backend),
        ):
            sync()
            start = time.perf_counter()
            tokens, sequences = fn(prompts, args.max_tokens)
            sync()
            measured.append(Measured(label, sequences, tokens, time.perf_counter() - start))
            console.print(f"{label}: {tokens} tokens in {measured[-1].seconds:.1f} s")

    table = Table(title="hf backend throughput")
    table.add_column("method")
    table.add_column("sequences", justify="right")
    table.add_column("new tokens", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("tokens/s", justify="right")
    for m in measured:
        table.add_row(
            m.label, str(m.sequences), str(m.tokens), f"{m.seconds:.2f}", f"{m.tokens_per_s:.1f}"
        )
    console.print(table)
    ratio = measured[1].tokens_per_s / measured[0].tokens_per_s
    console.print(f"speed-up (tokens/s, backend / generate): [bold]{ratio:.2f}x[/]")


if __name__ == "__main__":
    main()
