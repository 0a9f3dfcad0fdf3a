"""Quiet output: a normal run prints ttc's progress, tables and errors only; `--verbose`
brings the libraries' bars and warnings and ttc's retry lines back."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ttc.errors import BackendError
from ttc.progress import VERBOSE_ENV

from conftest import subprocess_env

GENERATE = textwrap.dedent(
    """
    import asyncio, sys
    from ttc.backends.hf import HFBackend, HFBackendConfig
    from ttc.types import GenerateRequest, Sampling

    backend = HFBackend(HFBackendConfig(model={dir!r}, device="cpu"))
    asyncio.run(backend.start())
    ids = tuple(backend.encode("w1 w2"))
    req = GenerateRequest(prompt="", prompt_token_ids=ids, sampling=Sampling(n=2, max_tokens=6))
    backend.generate_batch([req])
    print("generated")
    """
)


def test_hf_generation_prints_no_library_warnings(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from test_progress import _tiny_model_dir

    script = GENERATE.format(dir=str(_tiny_model_dir(tmp_path)))
    env = subprocess_env()
    env.pop(VERBOSE_ENV, None)
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert "generated" in proc.stdout
    assert proc.stderr.strip() == "", proc.stderr  # no deprecation notice, no bar


def test_gguf_conversion_bar_is_hidden_unless_verbose(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("gguf")
    gguf_utils = pytest.importorskip("transformers.modeling_gguf_pytorch_utils")
    from ttc.backends.models import _quiet_gguf_bar

    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    with _quiet_gguf_bar():
        assert gguf_utils.tqdm(range(3)).disable
    assert not gguf_utils.tqdm(range(3), file=open(os.devnull, "w")).disable  # noqa: SIM115
    monkeypatch.setenv(VERBOSE_ENV, "1")
    with _quiet_gguf_bar():
        assert not gguf_utils.tqdm(range(3), file=open(os.devnull, "w")).disable  # noqa: SIM115


def _refused_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again: nothing listens there


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_openai_retries_are_detail(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, verbose: bool
) -> None:
    from ttc.backends.openai import OpenAIBackend, OpenAIBackendConfig

    caplog.set_level(logging.INFO if verbose else logging.WARNING, logger="ttc")
    backend = OpenAIBackend(
        OpenAIBackendConfig(
            base_url=f"http://127.0.0.1:{_refused_port()}/v1",
            max_attempts=3,
            backoff_base_s=0.0,
            connect_timeout_s=2.0,
            fail_fast=0,  # retry refusals (by default a refusal at start fails at once)
        )
    )

    async def go() -> None:
        try:
            await backend.start()
        finally:
            await backend.close()

    with pytest.raises(BackendError) as info:
        asyncio.run(go())
    assert "after 3 attempts" in str(info.value)
    retry_lines = [r for r in caplog.records if "failed (connection)" in r.getMessage()]
    assert len(retry_lines) == (3 if verbose else 0)


def test_verbose_flag_turns_detail_on(monkeypatch: pytest.MonkeyPatch) -> None:
    from ttc.cli import app

    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    logger = logging.getLogger("ttc")
    handlers, level = list(logger.handlers), logger.level
    try:
        result = CliRunner().invoke(app, ["--verbose", "plugins", "--json"])
        assert result.exit_code == 0, result.output
        assert os.environ.get(VERBOSE_ENV) == "1"
        assert logger.level == logging.INFO
    finally:
        logger.handlers[:] = handlers
        logger.setLevel(level)
        os.environ.pop(VERBOSE_ENV, None)
