"""A small rectified-flow (flow-matching) velocity network for scikit-learn's 8x8 digits.

The interpolant is linear: `x_t = t * x1 + (1 - t) * x0`, with `x0 ~ N(0, I)` noise at
`t = 0` and `x1` a digit image (64 pixels scaled to [-1, 1]) at `t = 1`. The network
learns `v(x_t, t, c) ~ E[x1 - x0 | x_t]` by regressing `x1 - x0`. It is class-conditional
with a null class (`c = None`): labels are dropped in training with probability
`label_dropout`, so one network samples both "any digit" and "a digit of class c".

`load_or_train(spec)` returns the network for a `FlowModelSpec`, trained on first use and
cached under `$TTC_CACHE_DIR/flow/` (default `~/.cache/ttc/flow/`), keyed by the spec.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

N_CLASSES = 10
DIM = 64


@dataclass(frozen=True)
class FlowModelSpec:
    """What defines a trained velocity network (its cache key)."""

    hidden: int = 128
    layers: int = 3
    steps: int = 3000
    """Training steps (Adam, batch `batch`)."""
    batch: int = 128
    lr: float = 2e-3
    label_dropout: float = 0.5
    seed: int = 0

    def key(self) -> str:
        raw = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(raw.encode()).hexdigest()[:12]


DEFAULT_SPEC = FlowModelSpec()
"""The benchmark's model: under a minute of training on 2 idle CPU cores, a few on busy ones."""
TINY_SPEC = FlowModelSpec(hidden=64, layers=2, steps=400, batch=128, lr=3e-3)
"""A model the tests train in seconds."""


def load_digits_data() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as (images in [-1, 1], shape (1797, 64), float32; labels)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data.astype(np.float32) / 8.0) - 1.0
    return x, digits.target.astype(np.int64)


def to_pixels(x: np.ndarray) -> np.ndarray:
    """Model space back to the dataset's 0..16 pixel scale (clipped)."""
    return np.clip((x + 1.0) * 8.0, 0.0, 16.0)


class VelocityMLP(nn.Module):
    """`v(x, t, c)`: an MLP over the image, a sinusoidal embedding of `t` and a learned
    class embedding (index 10 is the null class)."""

    def __init__(self, *, hidden: int, layers: int, time_features: int = 16) -> None:
        super().__init__()
        self.time_features = time_features
        self.label = nn.Embedding(N_CLASSES + 1, hidden)
        self.inp = nn.Linear(DIM + time_features, hidden)
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers - 1))
        self.out = nn.Linear(hidden, DIM)
        self.act = nn.SiLU()

    def _time(self, t: torch.Tensor) -> torch.Tensor:
        half = self.time_features // 2
        freqs = torch.exp(torch.arange(half, dtype=t.dtype) * (math.log(100.0) / max(half - 1, 1)))
        angles = t[:, None] * freqs[None, :] * math.pi
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.act(self.inp(torch.cat([x, self._time(t)], dim=1)) + self.label(labels))
        for block in self.blocks:
            h = h + self.act(block(h))
        out: torch.Tensor = self.out(h)
        return out

    @property
    def flops_per_nfe(self) -> float:
        """Multiply-adds of one row through the linear layers, times two."""
        return 2.0 * sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))


def train(
    spec: FlowModelSpec, *, progress: Callable[[int, float], None] | None = None
) -> VelocityMLP:
    """Train a velocity network on the digits by flow matching (linear interpolant)."""
    torch.manual_seed(spec.seed)
    gen = torch.Generator().manual_seed(spec.seed)
    x_np, y_np = load_digits_data()
    data, labels = torch.from_numpy(x_np), torch.from_numpy(y_np)
    model = VelocityMLP(hidden=spec.hidden, layers=spec.layers)
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=spec.steps)
    for step in range(spec.steps):
        idx = torch.randint(0, len(data), (spec.batch,), generator=gen)
        x1, c = data[idx], labels[idx].clone()
        c[torch.rand(spec.batch, generator=gen) < spec.label_dropout] = N_CLASSES
        x0 = torch.randn(x1.shape, generator=gen)
        t = torch.rand(spec.batch, generator=gen)
        xt = t[:, None] * x1 + (1 - t[:, None]) * x0
        loss = ((model(xt, t, c) - (x1 - x0)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None and (step % 200 == 0 or step == spec.steps - 1):
            progress(step, float(loss.detach()))
    model.eval()
    return model


def cache_path(spec: FlowModelSpec, cache: str | os.PathLike[str] | None = None) -> Path:
    from ttc.backends.models import cache_dir

    return cache_dir(cache) / "flow" / f"digits-velocity-{spec.key()}.pt"


def load_or_train(
    spec: FlowModelSpec = DEFAULT_SPEC,
    *,
    cache: str | os.PathLike[str] | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> VelocityMLP:
    """The trained network for `spec`: from the cache, or trained now and cached."""
    path = cache_path(spec, cache)
    model = VelocityMLP(hidden=spec.hidden, layers=spec.layers)
    if path.is_file():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        model.eval()
        return model
    model = train(spec, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)  # atomic: a concurrent reader never sees half a file
    return model


def describe(spec: FlowModelSpec) -> dict[str, Any]:
    return {"name": f"digits-velocity-{spec.key()}", **asdict(spec)}


class TorchVelocity:
    """A trained `VelocityMLP` as the context's `VelocityModel` (numpy in and out)."""

    def __init__(self, net: VelocityMLP) -> None:
        self.net = net
        self.flops_per_nfe = net.flops_per_nfe
        self.rows = 0
        """Rows the network evaluated (an independent count of NFEs)."""

    def velocity(self, x: np.ndarray, t: float, target: int | None) -> np.ndarray:
        n = len(x)
        self.rows += n
        label = N_CLASSES if target is None else target
        with torch.no_grad():
            v = self.net(
                torch.as_tensor(x, dtype=torch.float32),
                torch.full((n,), float(t)),
                torch.full((n,), label, dtype=torch.long),
            )
        return v.numpy().astype(np.float64)
