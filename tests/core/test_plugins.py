"""Plugin discovery: entry points, the allow-list, and typed errors that name the plugin."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ttc.errors import DuplicateNameError, HookSpecError, PluginError, PluginImportError
from ttc.registry import build_registry

from conftest import DOUBLES, subprocess_env, ttc_cli

DEMO_PLUGIN = '''
"""A third-party strategy: answer with the first sample."""
from dataclasses import dataclass

import ttc
from ttc.config import StrategyConfig, bounded
from ttc.interfaces import Strategy
from ttc.types import Sampling, Solution


@dataclass
class FirstSampleConfig(StrategyConfig):
    name: str = "first_sample"
    max_tokens: int = bounded(64, ge=1)


class FirstSample(Strategy):
    name = "first_sample"
    uses_reward = False

    async def solve(self, problem, ctx):
        (b,) = await ctx.generate([ctx.root], Sampling(n=1, max_tokens=self.config.max_tokens))
        b.finished = True
        return Solution(answer=ctx.answer(b), branch=b, trace={"by": "demo"})


@ttc.hookimpl
def register_strategies(register):
    register(FirstSample, FirstSampleConfig)
'''


@pytest.fixture(scope="module")
def demo_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pip-install a plugin package with an entry point in group `ttc` into a directory."""
    src = tmp_path_factory.mktemp("demo_src")
    (src / "ttc_demo_plugin.py").write_text(DEMO_PLUGIN)
    (src / "pyproject.toml").write_text(
        textwrap.dedent(
            """
            [build-system]
            requires = ["setuptools"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "ttc-demo-plugin"
            version = "1.2.3"

            [project.entry-points.ttc]
            demo = "ttc_demo_plugin"

            [tool.setuptools]
            py-modules = ["ttc_demo_plugin"]
            """
        )
    )
    site = tmp_path_factory.mktemp("demo_site")
    subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
            "--no-build-isolation", "--target", str(site), str(src),
        ],
        check=True,
    )  # fmt: skip
    return site


def test_installed_plugin_is_listed_and_its_strategy_runs(
    demo_site: Path, tmp_path: Path, store_url: str
) -> None:
    env = subprocess_env(PYTHONPATH=f"{demo_site}:{subprocess_env()['PYTHONPATH']}")
    listed = ttc_cli(["plugins", "--json"], cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    plugins = {p["name"]: p for p in json.loads(listed.stdout)}
    assert plugins["demo"]["version"] == "1.2.3"
    assert plugins["demo"]["distribution"] == "ttc-demo-plugin"
    assert plugins["demo"]["provides"] == {"strategy": ["first_sample"]}
    assert plugins["ttc"]["builtin"] is True

    table = ttc_cli(["plugins"], cwd=tmp_path, env=env)
    assert "first_sample" in table.stdout and "1.2.3" in table.stdout

    ran = ttc_cli(
        ["run", *DOUBLES, "strategy=first_sample", "reward=none", f"store.url={store_url}",
         "task.n_problems=3"],
        cwd=tmp_path,
        env=env,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    from ttc.store import Store

    (run,) = Store(store_url).list_runs()
    assert run["strategy"] == "first_sample"
    assert run["versions"]["plugins"]["demo"] == "1.2.3"
    assert [r["trace"] for r in Store(store_url).results(run["id"])] == [{"by": "demo"}] * 3


def test_allow_list_excludes_third_party_plugins(demo_site: Path, tmp_path: Path) -> None:
    base = subprocess_env(PYTHONPATH=f"{demo_site}:{subprocess_env()['PYTHONPATH']}")
    for allow, expected in (("", {"ttc"}), ("demo", {"ttc", "demo"})):
        env = {**base, "TTC_PLUGINS": allow}
        listed = ttc_cli(["plugins", "--json"], cwd=tmp_path, env=env)
        assert {p["name"] for p in json.loads(listed.stdout)} == expected


def _plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, body: str) -> None:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("TTC_PLUGIN_MODULES", name)


def test_duplicate_name_names_both_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _plugin_module(
        tmp_path,
        monkeypatch,
        "clash_plugin",
        """
        import ttc
        from ttc.strategies.best_of_n import BestOfN, BestOfNConfig

        @ttc.hookimpl
        def register_strategies(register):
            register(BestOfN, BestOfNConfig)
        """,
    )
    with pytest.raises(DuplicateNameError) as info:
        build_registry()
    assert info.value.first == "ttc" and info.value.second == "clash_plugin"
    assert "best_of_n" in str(info.value)


def test_misspelt_hook_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _plugin_module(
        tmp_path,
        monkeypatch,
        "typo_plugin",
        """
        import ttc

        @ttc.hookimpl
        def register_strategy(register):
            pass
        """,
    )
    with pytest.raises(HookSpecError) as info:
        build_registry()
    assert info.value.plugin == "typo_plugin"
    assert "register_strategy" in str(info.value)


def test_plugin_that_fails_to_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _plugin_module(tmp_path, monkeypatch, "broken_plugin", "import does_not_exist_anywhere\n")
    with pytest.raises(PluginImportError) as info:
        build_registry()
    assert info.value.plugin == "broken_plugin"
    assert "does_not_exist_anywhere" in str(info.value)


def test_registering_a_non_strategy_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _plugin_module(
        tmp_path,
        monkeypatch,
        "wrong_plugin",
        """
        import ttc
        from ttc.config import StrategyConfig

        @ttc.hookimpl
        def register_strategies(register):
            register(dict, StrategyConfig)
        """,
    )
    with pytest.raises(PluginError) as info:
        build_registry()
    assert info.value.plugin == "wrong_plugin"


def test_plugin_errors_reach_the_cli_as_one_line(tmp_path: Path) -> None:
    (tmp_path / "broken_cli_plugin.py").write_text("raise RuntimeError('boom')\n")
    env = subprocess_env(
        TTC_PLUGIN_MODULES="broken_cli_plugin",
        PYTHONPATH=f"{tmp_path}:{subprocess_env()['PYTHONPATH']}",
    )
    proc = ttc_cli(["plugins"], cwd=tmp_path, env=env)
    assert proc.returncode == PluginImportError.exit_code
    assert "broken_cli_plugin" in proc.stderr and "boom" in proc.stderr
    assert "Traceback" not in proc.stderr
