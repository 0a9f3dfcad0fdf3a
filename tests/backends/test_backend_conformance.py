"""Every backend passes `ttc.testing.BackendConformance` (what a generation and its
`Usage` mean): the transformers backend on a tiny random model, the OpenAI-compatible
backend against the in-test HTTP server (test_openai.py's, with a vocabulary that has
multi-character tokens, stopping as vLLM does), and the test doubles (the batched
scripted backend and both simulated ones: batched, and self-batching with the prompt
counted per sample). The vLLM backend runs the suite in test_vllm.py (slow)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import pytest

from ttc.interfaces import Backend
from ttc.simulation import SelfBatchingSimBackend, SimBackend, SimBackendConfig, sim_prompt
from ttc.testing import (
    BackendConformance,
    ScriptedBackend,
    ScriptedBackendConfig,
    synthetic_problem,
)
from ttc.types import Problem


class TestScriptedBackend(BackendConformance):
    problem = synthetic_problem()

    def make_backend(self) -> Backend:
        return ScriptedBackend(ScriptedBackendConfig(steps=3, p_correct=0.7))


SIM_PROBLEM = Problem(
    id="s", prompt=sim_prompt("s", answer=7, steps=3, q=0.7, wrong="1:1", tail=0.0, spread=2)
)


class TestSimBackend(BackendConformance):
    problem = SIM_PROBLEM

    def make_backend(self) -> Backend:
        return SimBackend(SimBackendConfig())


class TestSelfBatchingSimBackend(BackendConformance):
    problem = SIM_PROBLEM

    def make_backend(self) -> Backend:
        return SelfBatchingSimBackend(SimBackendConfig())


class TestHFBackend(BackendConformance):
    """A tiny random Llama with a BPE tokenizer (multi-character tokens, a chat
    template), loaded through the model-directory path."""

    top_logprobs = 3
    problem = Problem(id="h", messages=({"role": "user", "content": "the cat sat on"},))
    _dir: ClassVar[Path | None] = None

    def make_backend(self) -> Backend:
        pytest.importorskip("transformers")
        from test_hf import _build_model_dir

        from ttc.backends.hf import HFBackend, HFBackendConfig

        path = Path(tempfile.mkdtemp(prefix="ttc-conf-hf-"))
        type(self)._dir = path
        _build_model_dir(path, with_bos=False, chat=True)
        return HFBackend(HFBackendConfig(model=str(path), device="cpu"))

    @classmethod
    def teardown_class(cls) -> None:
        super().teardown_class()
        if cls._dir is not None:
            shutil.rmtree(cls._dir, ignore_errors=True)


class TestOpenAIBackend(BackendConformance):
    """The in-test server tokenizes with merged tokens ("Step", "ok", "\\nS"), so stop
    strings end inside tokens; the backend reads /tokenize and /detokenize."""

    problem = synthetic_problem()
    _server: ClassVar[Any] = None

    def make_backend(self) -> Backend:
        from test_openai import FakeServer, _config

        from ttc.backends.openai import OpenAIBackend

        server = FakeServer(merges=("\nS", "ok", "Step"))
        server.plan = lambda body: []
        server.__enter__()
        type(self)._server = server
        return OpenAIBackend(_config(server))

    @classmethod
    def teardown_class(cls) -> None:
        super().teardown_class()
        if cls._server is not None:
            cls._server.__exit__()
