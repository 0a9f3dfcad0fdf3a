# test_plugin_conformance.py
from ttc.interfaces import Backend, RewardModel
from ttc.testing import (
    BackendConformance,
    RewardConformance,
    ScriptedBackend,
    ScriptedBackendConfig,
    SyntheticReward,
    SyntheticRewardConfig,
    synthetic_problem,
)


class TestMyBackend(BackendConformance):
    problem = synthetic_problem()  # what the suite's requests continue
    seeded = True  # the same seed gives the same samples
    top_logprobs = 0  # top alternatives per token it returns (0: none)

    def make_backend(self) -> Backend:  # built, started and closed once per class
        return ScriptedBackend(ScriptedBackendConfig(steps=2))  # yours here


class TestMyReward(RewardConformance):
    score_range = (0.0, 1.0)

    def make_reward(self) -> RewardModel:
        return SyntheticReward(SyntheticRewardConfig(noise=0.05))  # yours here
