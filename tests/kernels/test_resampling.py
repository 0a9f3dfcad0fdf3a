"""Batched resampling: kernel against reference, reference against the strategies' schemes."""

from __future__ import annotations

import pytest
import torch

from _device import CUDA, DEVICE

device = DEVICE

SIZES = [(1, 1, 1), (3, 5, 5), (4, 33, 17), (2, 200, 300), (5, 7, 64)]


@pytest.mark.parametrize("scheme", ["systematic", "residual"])
@pytest.mark.parametrize("problems,particles,n", SIZES)
def test_kernel_matches_reference(problems, particles, n, scheme) -> None:
    from ttc.kernels.resampling import resample

    gen = torch.Generator().manual_seed(particles * 7 + n)
    weights = torch.rand(problems, particles, generator=gen) ** 3
    if problems > 1:
        weights[1] = 0.0  # an all-zero row resamples uniformly
    uniforms = torch.rand(problems, n, generator=gen, dtype=torch.float64)
    got = resample(weights.to(device), uniforms.to(device), scheme=scheme, impl="triton")
    want = resample(weights, uniforms, scheme=scheme, impl="reference")
    assert got.cpu().tolist() == want.tolist()
    assert int(want.min()) >= 0 and int(want.max()) < particles


class _Draws:
    """A random.Random stand-in that replays given uniforms (to feed both sides alike)."""

    def __init__(self, values: list[float]) -> None:
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)


@pytest.mark.parametrize("scheme", ["systematic", "residual"])
@pytest.mark.parametrize("particles,n", [(1, 3), (6, 6), (40, 25), (9, 100)])
def test_reference_is_the_particle_filters_scheme(particles: int, n: int, scheme: str) -> None:
    from ttc.kernels.resampling import resample
    from ttc.strategies import resampling

    gen = torch.Generator().manual_seed(n)
    weights = torch.rand(3, particles, generator=gen, dtype=torch.float64) ** 2
    weights /= weights.sum(-1, keepdim=True)
    uniforms = torch.rand(3, n, generator=gen, dtype=torch.float64)
    got = resample(weights, uniforms, scheme=scheme, impl="reference")  # type: ignore[arg-type]
    for b in range(3):
        draws = _Draws(uniforms[b].tolist())
        want = resampling.RESAMPLERS[scheme](weights[b].tolist(), n, draws)  # type: ignore[arg-type]
        assert got[b].tolist() == want


def test_systematic_copies_each_particle_floor_or_ceil_of_n_w() -> None:
    from ttc.kernels.resampling import resample

    weights = torch.tensor([[0.5, 0.25, 0.125, 0.125], [0.7, 0.1, 0.1, 0.1]])
    for u in (0.01, 0.3, 0.99):
        out = resample(weights, torch.full((2, 8), u), scheme="systematic", impl="reference")
        counts = torch.stack([torch.bincount(r, minlength=4) for r in out])
        assert bool(((counts - 8 * weights).abs() < 1).all())


def test_bad_input_is_one_clear_error() -> None:
    from ttc.kernels.resampling import resample

    with pytest.raises(ValueError, match="scheme must be systematic or residual"):
        resample(torch.ones(1, 2), torch.zeros(1, 2), scheme="stratified")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"weights \[problems, particles\]"):
        resample(torch.ones(2), torch.zeros(1, 2), scheme="residual")


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_gpu_many_problems() -> None:
    from ttc.kernels.resampling import resample

    weights = torch.rand(512, 256, device="cuda")
    uniforms = torch.rand(512, 256, device="cuda", dtype=torch.float64)
    for scheme in ("systematic", "residual"):
        got = resample(weights, uniforms, scheme=scheme, impl="triton")  # type: ignore[arg-type]
        want = resample(weights, uniforms, scheme=scheme, impl="reference")  # type: ignore[arg-type]
        assert (got == want).float().mean() > 0.999  # float64 sums in another order
