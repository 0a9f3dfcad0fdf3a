"""The `run.executor` / `ray.*` options, actor placement and chunking (no cluster)."""

from __future__ import annotations

import re
import shlex
from types import SimpleNamespace

import pytest

from ttc.errors import ConfigError
from ttc.executor.cluster import plan_actors, sqlite_file
from ttc.executor.routing import chunks
from ttc.launch import compose
from ttc.resume import parse_request

from conftest import ROOT

NODES = [
    {"NodeID": "cpu-node", "Resources": {"CPU": 16.0}},
    {"NodeID": "gpu-node", "Resources": {"CPU": 32.0, "GPU": 4.0}},
]


def test_actors_go_per_gpu_where_there_are_gpus_and_per_node_elsewhere() -> None:
    per_gpu = plan_actors(NODES, SimpleNamespace(actors_per_node=2, actors_per_gpu=2))
    assert [p.node_id for p in per_gpu].count("gpu-node") == 8  # 4 GPUs x 2
    assert {p.num_gpus for p in per_gpu if p.node_id == "gpu-node"} == {0.5}
    assert [(p.node_id, p.num_gpus) for p in per_gpu if p.node_id == "cpu-node"] == [
        ("cpu-node", 0.0)
    ] * 2
    per_node = plan_actors(NODES, SimpleNamespace(actors_per_node=3, actors_per_gpu=None))
    assert [p.node_id for p in per_node] == ["cpu-node"] * 3 + ["gpu-node"] * 3
    assert {p.num_gpus for p in per_node} == {0.0}


def test_chunks_are_consecutive_runs_in_task_order() -> None:
    assert chunks(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert chunks([], 4) == []


def test_a_relative_sqlite_store_is_made_absolute_for_the_workers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.chdir(str(tmp_path))
    assert sqlite_file("sqlite:///runs/ttc.db") == f"{tmp_path}/runs/ttc.db"
    assert sqlite_file("postgresql+psycopg://u@h/db") is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("run.executor=dask", "run.executor='dask' is not valid; valid choices: local, ray"),
        ("ray.chunk_size=0", "ray.chunk_size=0 is out of range; it must be >= 1"),
        ("ray.actors_per_gpu=0", "ray.actors_per_gpu=0 is out of range; it must be >= 1"),
        ("ray.adress=auto", "ray.adress is not a config key"),
    ],
)
def test_bad_ray_options_fail_in_one_line(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        compose([override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_readme_command_that_moves_a_run_to_a_cluster_composes() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### From a laptop to a cluster", 1)[1]
    line = next(x for x in section.splitlines() if x.startswith("ttc run run.executor=ray"))
    cfg = compose(shlex.split(line)[2:])
    assert cfg.run.executor == "ray" and cfg.ray.address == "auto"
    assert re.match(r"postgresql\+psycopg://", str(cfg.store.url))


def test_a_run_may_be_resumed_on_another_executor() -> None:
    request = parse_request(["resume=abc", "run.executor=local", "ray.address=auto"])
    assert request.overrides == {"run.executor": "local", "ray.address": "auto"}
    with pytest.raises(ConfigError, match=r"run\.executor='dask' is not valid"):
        parse_request(["resume=abc", "run.executor=dask"])
