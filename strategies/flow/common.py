"""Helpers the flow strategies share."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ttc.errors import ConfigError
from ttc.flow.context import FlowContext
from ttc.flow.interfaces import FlowStrategyConfig
from ttc.flow.sampler import Predictions


@dataclass
class SampleSetConfig(FlowStrategyConfig):
    n: int | None = field(
        default=None,
        metadata={"ge": 1, "help": "trajectories (None: as many as budget.nfes pays for)"},
    )


def population(ctx: FlowContext, config: SampleSetConfig) -> int:
    """How many trajectories of `nfes_per_sample` NFEs the strategy runs."""
    t = config.nfes_per_sample
    left = ctx.nfes_left()
    if config.n is not None:
        return config.n if left is None else min(config.n, left // t)
    if left is None:
        raise ConfigError(
            "a flow strategy without `n` sizes its sample set from budget.nfes, which is not set",
            key="budget.nfes",
            hint="set budget.nfes (e.g. 100) or the strategy's n",
        )
    if left < t:
        raise ConfigError(
            f"budget.nfes={left} pays for no trajectory of {t} NFEs",
            key="budget.nfes",
            value=left,
            hint=f"raise budget.nfes to at least {t} or lower nfes_per_sample",
        )
    return left // t


def take(pred: Predictions, rows: np.ndarray | list[int]) -> Predictions:
    idx = np.asarray(rows)
    return Predictions(x1_hat=pred.x1_hat[idx], x0_hat=pred.x0_hat[idx], u=pred.u[idx])


def softmax_weights(rewards: np.ndarray, temperature: float) -> np.ndarray:
    """Resampling weights `exp(r / temperature)`, normalised."""
    logits = np.asarray(rewards, dtype=np.float64) / temperature
    w = np.exp(logits - logits.max())
    return np.asarray(w / w.sum())
