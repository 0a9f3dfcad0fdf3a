"""ttc's built-in plugin: registers the shipped backends, strategies, reward models,
allocators and tasks through the same hooks third-party plugins use.

Imports of implementation modules stay inside the hooks' bodies' callees: those modules
import torch and friends lazily, so loading this plugin is cheap.
"""

from __future__ import annotations

from collections.abc import Callable

import ttc


@ttc.hookimpl
def register_backends(register: Callable[..., None]) -> None:
    from ttc.backends.hf import HFBackend, HFBackendConfig
    from ttc.backends.openai import OpenAIBackend, OpenAIBackendConfig
    from ttc.backends.vllm import VLLMBackend, VLLMBackendConfig

    register(HFBackend, HFBackendConfig)
    register(VLLMBackend, VLLMBackendConfig)
    register(OpenAIBackend, OpenAIBackendConfig)


@ttc.hookimpl
def register_strategies(register: Callable[..., None]) -> None:
    from ttc.strategies.a_star import AStar, AStarConfig
    from ttc.strategies.adaptive_consistency import (
        AdaptiveConsistency,
        AdaptiveConsistencyConfig,
    )
    from ttc.strategies.beam_search import BeamSearch, BeamSearchConfig
    from ttc.strategies.best_of_majority import BestOfMajority, BestOfMajorityConfig
    from ttc.strategies.best_of_n import BestOfN, BestOfNConfig
    from ttc.strategies.cascade import Cascade, CascadeConfig
    from ttc.strategies.deepconf import DeepConf, DeepConfConfig
    from ttc.strategies.dvts import Dvts, DvtsConfig
    from ttc.strategies.particle_filter import ParticleFilter, ParticleFilterConfig
    from ttc.strategies.particle_gibbs import ParticleGibbs, ParticleGibbsConfig
    from ttc.strategies.rebase import Rebase, RebaseConfig
    from ttc.strategies.revision import Revision, RevisionConfig
    from ttc.strategies.self_consistency import SelfConsistency, SelfConsistencyConfig
    from ttc.strategies.solve_detect_verify import SolveDetectVerify, SolveDetectVerifyConfig

    register(BestOfN, BestOfNConfig)
    register(BeamSearch, BeamSearchConfig)
    register(SelfConsistency, SelfConsistencyConfig)
    register(BestOfMajority, BestOfMajorityConfig)
    register(Dvts, DvtsConfig)
    register(ParticleFilter, ParticleFilterConfig)
    register(ParticleGibbs, ParticleGibbsConfig)
    register(AStar, AStarConfig)
    register(AdaptiveConsistency, AdaptiveConsistencyConfig)
    register(Rebase, RebaseConfig)
    register(Cascade, CascadeConfig)
    register(Revision, RevisionConfig)
    register(SolveDetectVerify, SolveDetectVerifyConfig)
    register(DeepConf, DeepConfConfig)


@ttc.hookimpl
def register_reward_models(register: Callable[..., None]) -> None:
    from ttc.plugins.rewards.judge import Judge, JudgeConfig
    from ttc.plugins.rewards.oracle import OracleReward, OracleRewardConfig
    from ttc.plugins.rewards.orm import ORMConfig, OutcomeRewardModel
    from ttc.plugins.rewards.prm import PRMConfig, ProcessRewardModel
    from ttc.plugins.rewards.rule import RuleReward, RuleRewardConfig
    from ttc.plugins.rewards.self_certainty import SelfCertainty, SelfCertaintyConfig

    register(SelfCertainty, SelfCertaintyConfig)
    register(ProcessRewardModel, PRMConfig)
    register(OutcomeRewardModel, ORMConfig)
    register(Judge, JudgeConfig)
    register(RuleReward, RuleRewardConfig)
    register(OracleReward, OracleRewardConfig)


@ttc.hookimpl
def register_allocators(register: Callable[..., None]) -> None:
    from ttc.plugins.allocators.adaptive_stop import (
        AdaptiveStopAllocator,
        AdaptiveStopAllocatorConfig,
    )
    from ttc.plugins.allocators.difficulty import DifficultyAllocator, DifficultyAllocatorConfig
    from ttc.plugins.allocators.fixed import FixedAllocator, FixedAllocatorConfig
    from ttc.plugins.allocators.global_pool import GlobalAllocator, GlobalAllocatorConfig
    from ttc.plugins.allocators.rollover import RolloverAllocator, RolloverAllocatorConfig
    from ttc.plugins.allocators.solve_verify import (
        SolveVerifyAllocator,
        SolveVerifyAllocatorConfig,
    )

    register(FixedAllocator, FixedAllocatorConfig)
    register(GlobalAllocator, GlobalAllocatorConfig)
    register(AdaptiveStopAllocator, AdaptiveStopAllocatorConfig)
    register(RolloverAllocator, RolloverAllocatorConfig)
    register(DifficultyAllocator, DifficultyAllocatorConfig)
    register(SolveVerifyAllocator, SolveVerifyAllocatorConfig)


@ttc.hookimpl
def register_tasks(register: Callable[..., None]) -> None:
    from ttc.plugins.tasks.arith import ArithTask, ArithTaskConfig
    from ttc.plugins.tasks.hub import (
        Aime24Task,
        Aime24TaskConfig,
        Amc23Task,
        Amc23TaskConfig,
        Gsm8kTask,
        Gsm8kTaskConfig,
        JsonlTask,
        JsonlTaskConfig,
        Math500Task,
        Math500TaskConfig,
    )

    register(ArithTask, ArithTaskConfig)
    register(Gsm8kTask, Gsm8kTaskConfig)
    register(Math500Task, Math500TaskConfig)
    register(Aime24Task, Aime24TaskConfig)
    register(Amc23Task, Amc23TaskConfig)
    register(JsonlTask, JsonlTaskConfig)


@ttc.hookimpl
def register_configs(register: Callable[..., None]) -> None:
    from ttc.serve.config import ServeConfig

    register("serve", "default", ServeConfig())
    from ttc.flow.registry import config_nodes

    for group, name, node in config_nodes():  # the flow modality's schemas (docs/flow.md)
        register(group, name, node)
