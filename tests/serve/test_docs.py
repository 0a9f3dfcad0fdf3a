"""docs/serve.md's examples are the files under docs/examples/, verbatim, and both run
against a live gateway (the scripted backend; the keys the examples send are checked)."""

from __future__ import annotations

import json
import os
import runpy
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("openai")

from conftest import ROOT
from gateway_harness import gateway

DOC = ROOT / "docs" / "serve.md"
EXAMPLES = ROOT / "docs" / "examples"


@pytest.mark.parametrize("name", ["serve_openai.py", "serve_curl.sh"])
def test_the_doc_shows_the_tested_example_verbatim(name: str) -> None:
    assert (EXAMPLES / name).read_text() in DOC.read_text()


def test_the_examples_run_against_a_gateway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TTC_TEST_DOC_KEYS", "doc-key")
    with gateway(
        f"sqlite:///{tmp_path / 'ttc.db'}",
        "serve.api_keys_env=TTC_TEST_DOC_KEYS",
        "serve.max_budget.tokens=16000",
    ) as g:
        monkeypatch.setenv("TTC_SERVE_URL", g.url)
        monkeypatch.setenv("TTC_SERVE_KEY", "doc-key")
        runpy.run_path(str(EXAMPLES / "serve_openai.py"), run_name="__main__")
        out = capsys.readouterr().out
        assert out.count("\\boxed{") == 2  # the two answers
        assert "tokens over all samples" in out and "8 samples," in out
        assert f"of run {g.run.run_id}" in out
        if shutil.which("curl") is None:
            pytest.skip("curl is not installed")
        proc = subprocess.run(
            ["bash", str(EXAMPLES / "serve_curl.sh")],
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ),
        )
        body = json.loads(proc.stdout)
        assert body["object"] == "chat.completion", proc.stdout
        assert body["usage"]["ttc"]["samples"] == 5
        assert body["usage"]["ttc"]["strategy"] == "self_consistency"
        assert body["usage"]["ttc"]["budget"]["tokens"] == 2000
