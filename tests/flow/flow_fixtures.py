"""The tiny trained flow model and the rewards the flow tests share (trained once per
session into a session-wide cache directory)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def flow_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "flow-cache"


@pytest.fixture(scope="session")
def tiny_net(flow_cache: Path):
    import torch

    from ttc.flow.model import TINY_SPEC, load_or_train

    torch.set_num_threads(1)
    return load_or_train(TINY_SPEC, cache=flow_cache)


@pytest.fixture
def velocity(tiny_net):
    from ttc.flow.model import TorchVelocity

    return TorchVelocity(tiny_net)


@pytest.fixture(scope="session")
def digit_reward():
    from ttc.flow.reward import DigitReward

    return DigitReward()
