"""Log-sum-exp, entropy and self-certainty: kernel against reference against definitions."""

from __future__ import annotations

import math

import pytest
import torch

from _device import CUDA, DEVICE

device = DEVICE

TOL = {torch.float32: 1e-5, torch.float16: 1e-4, torch.bfloat16: 1e-4}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rows,vocab", [(1, 1), (3, 7), (2, 1000), (5, 4099), (2, 49152)])
def test_kernel_matches_reference(rows: int, vocab: int, dtype: torch.dtype) -> None:
    from ttc.kernels.vocab_stats import vocab_stats

    gen = torch.Generator().manual_seed(vocab)
    logits = (torch.randn(rows, vocab, generator=gen) * 3).to(dtype=dtype, device=device)
    got = vocab_stats(logits, impl="triton")
    want = vocab_stats(logits, impl="reference")
    for name, a, b in zip(("lse", "entropy", "self_certainty"), got, want, strict=True):
        torch.testing.assert_close(a, b, atol=TOL[dtype] * 10, rtol=TOL[dtype], msg=name)


@pytest.mark.parametrize("vocab", [262144])
def test_kernel_on_the_largest_vocabulary_with_masked_tokens(vocab: int) -> None:
    from ttc.kernels.vocab_stats import vocab_stats

    logits = torch.randn(2, vocab, generator=torch.Generator().manual_seed(0)).to(device)
    logits[1, :100] = float("-inf")
    got = vocab_stats(logits, impl="triton")
    want = vocab_stats(logits, impl="reference")
    torch.testing.assert_close(got.lse, want.lse)
    torch.testing.assert_close(got.entropy, want.entropy, atol=1e-4, rtol=1e-5)
    # a zero-probability token puts the distribution infinitely far from uniform
    assert math.isinf(float(got.self_certainty[1])) and math.isinf(float(want.self_certainty[1]))
    torch.testing.assert_close(got.self_certainty[0], want.self_certainty[0], atol=1e-4, rtol=1e-5)


def test_reference_matches_the_definitions() -> None:
    from ttc.kernels.vocab_stats import vocab_stats

    uniform = vocab_stats(torch.zeros(1, 50), impl="reference")
    assert float(uniform.entropy[0]) == pytest.approx(math.log(50))
    assert float(uniform.self_certainty[0]) == pytest.approx(0.0, abs=1e-6)
    assert float(uniform.lse[0]) == pytest.approx(math.log(50))
    x = torch.tensor([[2.0, 0.0, -1.0]])
    p = torch.softmax(x.double(), -1)[0]
    stats = vocab_stats(x, impl="reference")
    assert float(stats.entropy[0]) == pytest.approx(float(-(p * p.log()).sum()), rel=1e-6)
    kl = float((torch.full((3,), 1 / 3, dtype=torch.float64) * (1 / 3 / p).log()).sum())
    assert float(stats.self_certainty[0]) == pytest.approx(kl, rel=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_gpu_batch_of_large_vocabularies() -> None:
    from ttc.kernels.vocab_stats import vocab_stats

    logits = torch.randn(256, 262144, device="cuda", dtype=torch.bfloat16)
    for a, b in zip(
        vocab_stats(logits, impl="triton"), vocab_stats(logits, impl="reference"), strict=True
    ):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-4)
