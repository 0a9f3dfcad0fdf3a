"""The built-in tasks: arith generation and step checking, the prompted base, hub tasks
read from local copies, and the jsonl task."""

from __future__ import annotations

import ast
import json
import operator
import re
from pathlib import Path
from typing import Any

import pytest

from ttc.config import instantiate_config
from ttc.errors import ConfigError, DataError
from ttc.plugins.tasks import hub
from ttc.plugins.tasks.arith import MAX_LEVEL, ArithTask, ArithTaskConfig, check_steps
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
from ttc.types import Problem

# The shared data sets sit beside the repository (../shared/data from its root); a clone
# elsewhere has none, so the tests that read them skip.
DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is absent")


def arith(**kw: Any) -> ArithTask:
    return ArithTask(ArithTaskConfig(name="arith", **kw))


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def evaluate(expr: str) -> int:
    """An independent evaluator for + - * and parentheses (Python's own precedence)."""

    def walk(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        raise AssertionError(f"unexpected syntax in {expr!r}")

    return walk(ast.parse(expr, mode="eval").body)


# -- arith --------------------------------------------------------------------------------


def test_arith_same_seed_same_problems() -> None:
    first, again = arith(seed=3).load(), arith(seed=3).load()
    assert first == again
    other = arith(seed=4).load()
    assert [p.metadata["expression"] for p in other] != [p.metadata["expression"] for p in first]


def test_arith_problem_i_does_not_depend_on_n_problems() -> None:
    few, many = arith(n_problems=5).load(), arith(n_problems=20).load()
    assert many[:5] == few


def test_arith_levels_differ_in_shape() -> None:
    problems = arith(n_problems=4 * MAX_LEVEL, levels=list(range(1, MAX_LEVEL + 1))).load()
    by_level: dict[int, list[Problem]] = {}
    for p in problems:
        by_level.setdefault(p.metadata["level"], []).append(p)
    assert sorted(by_level) == list(range(1, MAX_LEVEL + 1))
    for p in by_level[1]:
        assert re.fullmatch(r"[2-9] \* [2-9]", p.metadata["expression"])
    for p in by_level[2]:
        assert re.fullmatch(r"\d\d \+ \d\d", p.metadata["expression"])
    for p in by_level[3]:
        assert re.fullmatch(r"\d\d \+ \d\d \+ \d\d", p.metadata["expression"])
    for level in range(4, MAX_LEVEL + 1):
        for p in by_level[level]:
            assert len(p.metadata["steps"]) == level - 2
            assert "(" in p.metadata["expression"]


def test_arith_single_level_and_invalid_levels() -> None:
    assert {p.metadata["level"] for p in arith(levels=2, n_problems=6).load()} == {2}
    for bad in (0, MAX_LEVEL + 1, [], ["2"], "2", [1, True]):
        with pytest.raises(ConfigError) as err:
            arith(levels=bad)
        assert err.value.key == "task.levels"


def test_arith_steps_are_exact() -> None:
    problems = arith(n_problems=80, levels=list(range(1, MAX_LEVEL + 1)), seed=11).load()
    for p in problems:
        steps = p.metadata["steps"]
        assert steps, p.id
        for step in steps:
            assert evaluate(step["expr"]) == step["value"]
            assert step["value"] >= 0
        assert evaluate(p.metadata["expression"]) == int(p.reference or "") == steps[-1]["value"]
        # every step after the first uses only numbers from the question or earlier steps
        known = {int(n) for n in re.findall(r"\d+", p.metadata["expression"])}
        for step in steps:
            assert {int(n) for n in re.findall(r"\d+", step["expr"])} <= known
            known.add(step["value"])


def test_arith_prompt_and_grading() -> None:
    (problem,) = arith(n_problems=1, levels=1).load()
    task = arith()
    user = problem.messages[-1]["content"]
    assert user.startswith(f"What is {problem.metadata['expression']}?")
    assert "\\boxed{}" in user
    answer = task.extract_answer(f"It is \\boxed{{{problem.reference}}}.")
    assert task.is_correct(answer, problem) is True
    assert task.is_correct(str(int(problem.reference or 0) + 1), problem) is False
    assert task.is_correct(None, problem) is False


def _level3() -> Problem:
    return next(p for p in arith(n_problems=3, levels=3).load())


def test_check_steps_right_and_wrong() -> None:
    p = _level3()
    a, b, c = (int(n) for n in re.findall(r"\d+", p.metadata["expression"]))
    s1, s2 = (step["value"] for step in p.metadata["steps"])
    right = [
        "Let's add the numbers one at a time.",
        f"{a} + {b} = {s1}.",
        f"Then {s1} + {c} = {s2}, so the answer is \\boxed{{{s2}}}.",
    ]
    assert check_steps(p, right) == [1.0, 1.0, 1.0]
    assert check_steps(p, [f"{a} + {b} + {c} = {s1} + {c} = {s2}"]) == [1.0]
    assert check_steps(p, [f"{a} + {b} = {s1 + 1}"]) == [0.0]
    assert check_steps(p, [f"{a} + {b} = {s1}", f"{s1} + {c} = {s2 - 10}"]) == [1.0, 0.0]
    # an intermediate value is not the final answer
    assert check_steps(p, [f"The answer is \\boxed{{{s1}}}"]) == [0.0]
    assert check_steps(p, [f"#### {s2}"]) == [1.0]


def test_check_steps_needs_steps() -> None:
    with pytest.raises(DataError, match="no metadata"):
        check_steps(Problem(id="x", reference="3"), ["1 + 2 = 3"])


# -- the prompted base --------------------------------------------------------------------


def test_system_prompt_and_instruction() -> None:
    (p,) = arith(n_problems=1, system_prompt="You are careful.", answer_format="hash").load()
    assert p.messages[0] == {"role": "system", "content": "You are careful."}
    assert "####" in p.messages[1]["content"]
    (p,) = arith(n_problems=1, instruction="Answer with a number.").load()
    assert len(p.messages) == 1
    assert p.messages[0]["content"].endswith("?\n\nAnswer with a number.")
    (p,) = arith(n_problems=1, instruction="").load()
    assert p.messages[0]["content"] == p.metadata["question"]


def test_limit_and_shuffle() -> None:
    ordered = [p.id for p in arith(n_problems=32).load()]
    shuffled = [p.id for p in arith(n_problems=32, shuffle=True, seed=5).load()]
    assert shuffled != ordered and sorted(shuffled) == sorted(ordered)
    assert [p.id for p in arith(n_problems=32, shuffle=True, seed=5).load()] == shuffled
    limited = [p.id for p in arith(n_problems=32, shuffle=True, seed=5, limit=4).load()]
    assert limited == shuffled[:4]
    assert [p.id for p in arith(n_problems=32, limit=3).load()] == ordered[:3]


def test_config_schema_validates_overrides() -> None:
    cfg = instantiate_config(ArithTaskConfig, {"name": "arith", "levels": 2}, "task")
    assert [p.metadata["level"] for p in ArithTask(cfg).load()[:2]] == [2, 2]
    with pytest.raises(ConfigError, match="answer_format"):
        instantiate_config(ArithTaskConfig, {"name": "arith", "answer_format": "latex"}, "task")
    with pytest.raises(ConfigError, match="n_problems"):
        instantiate_config(ArithTaskConfig, {"name": "arith", "n_problems": 0}, "task")


def test_builtin_plugin_registers_every_task() -> None:
    from ttc.registry import build_registry

    names = build_registry().names("task")
    assert {"arith", "gsm8k", "math500", "aime24", "amc23", "jsonl"} <= set(names)


# -- hub tasks, from the local copies -----------------------------------------------------


def _rows(name: str) -> list[dict[str, Any]]:
    with (DATA / name / "test.jsonl").open() as f:
        return [json.loads(line) for line in f]


@needs_data
def test_gsm8k_from_local_copy() -> None:
    files = str(DATA / "gsm8k" / "test.jsonl")
    task = Gsm8kTask(Gsm8kTaskConfig(name="gsm8k", data_files=files, limit=5))
    problems = task.load()
    rows = _rows("gsm8k")[:5]
    assert [p.id for p in problems] == ["0", "1", "2", "3", "4"]
    for p, row in zip(problems, rows, strict=True):
        assert p.reference == row["answer"].split("####")[-1].strip().replace(",", "")
        assert p.messages[-1]["content"].startswith(row["question"])
        assert task.is_correct(task.extract_answer(row["answer"]), p) is True
    shuffled = Gsm8kTask(Gsm8kTaskConfig(name="gsm8k", data_files=files, limit=5, shuffle=True))
    assert [p.id for p in shuffled.load()] != [p.id for p in problems]


@needs_data
def test_math500_from_local_copy() -> None:
    files = str(DATA / "math500" / "test.jsonl")
    problems = Math500Task(Math500TaskConfig(name="math500", data_files=files)).load()
    assert len(problems) == 500
    assert len({p.id for p in problems}) == 500
    first = _rows("math500")[0]
    assert problems[0].id == first["unique_id"]
    assert problems[0].reference == first["answer"]
    assert problems[0].metadata["subject"] == first["subject"]
    assert problems[0].metadata["level"] == first["level"]


@needs_data
def test_aime24_and_amc23_from_local_copies() -> None:
    aime = Aime24Task(
        Aime24TaskConfig(name="aime24", data_files=str(DATA / "aime24" / "test.jsonl"))
    ).load()
    assert len(aime) == 30
    assert all((p.reference or "").isdigit() for p in aime)
    amc_task = Amc23Task(
        Amc23TaskConfig(name="amc23", data_files=str(DATA / "amc23" / "test.jsonl"), limit=3)
    )
    amc = amc_task.load()
    assert amc[0].reference == "27"  # stored as 27.0
    assert amc_task.is_correct("27", amc[0]) is True


@needs_data
def test_hub_task_with_a_file_of_another_layout() -> None:
    files = str(DATA / "amc23" / "test.jsonl")
    with pytest.raises(DataError, match="no field 'unique_id'") as err:
        Math500Task(Math500TaskConfig(name="math500", data_files=files)).load()
    assert "task=jsonl" in (err.value.hint or "")


def test_gsm8k_answer_without_hash_line(tmp_path: Path) -> None:
    path = tmp_path / "g.jsonl"
    path.write_text(json.dumps({"question": "1+1?", "answer": "It is 2."}) + "\n")
    with pytest.raises(DataError, match="####"):
        Gsm8kTask(Gsm8kTaskConfig(name="gsm8k", data_files=str(path))).load()


def test_missing_file_names_it(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match=r"nope\.jsonl") as err:
        Gsm8kTask(Gsm8kTaskConfig(name="gsm8k", data_files=missing)).load()
    assert "task.data_files" in (err.value.hint or "")


def test_unreachable_hub_fails_fast_with_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "_hub_reachable", lambda: False)
    with pytest.raises(DataError, match="openai/gsm8k") as err:
        Gsm8kTask(Gsm8kTaskConfig(name="gsm8k")).load()
    assert "task.data_files=" in (err.value.hint or "")


# -- jsonl --------------------------------------------------------------------------------


def _write(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_jsonl_with_a_field_mapping(tmp_path: Path) -> None:
    files = _write(
        tmp_path / "mine.jsonl",
        [
            {"key": "a", "q": "Half of one?", "sol": "\\frac{1}{2}"},
            {"key": "b", "q": "2+2?", "sol": 4},
        ],
    )
    task = JsonlTask(
        JsonlTaskConfig(
            name="jsonl", data_files=files, question_field="q", answer_field="sol", id_field="key"
        )
    )
    a, b = task.load()
    assert (a.id, a.reference, b.id, b.reference) == ("a", "\\frac{1}{2}", "b", "4")
    assert a.messages[-1]["content"].startswith("Half of one?")
    assert task.is_correct("0.5", a) is True
    assert task.normalize("0.5") == task.normalize("\\frac12")


def test_jsonl_without_answers_is_ungraded(tmp_path: Path) -> None:
    files = _write(tmp_path / "q.jsonl", [{"question": "Why?"}])
    task = JsonlTask(JsonlTaskConfig(name="jsonl", data_files=files, answer_field=None))
    (p,) = task.load()
    assert p.id == "0" and p.reference is None
    assert task.is_correct("42", p) is None


def test_jsonl_missing_field_names_field_and_fix(tmp_path: Path) -> None:
    files = _write(tmp_path / "q.jsonl", [{"prompt": "1+1?", "answer": "2"}])
    with pytest.raises(DataError) as err:
        JsonlTask(JsonlTaskConfig(name="jsonl", data_files=files)).load()
    assert "no field 'question'" in err.value.message
    assert "prompt" in err.value.message  # the fields it does have
    assert "task.question_field=" in (err.value.hint or "")


def test_jsonl_needs_a_file() -> None:
    with pytest.raises(ConfigError) as err:
        JsonlTask(JsonlTaskConfig(name="jsonl")).load()
    assert err.value.key == "task.data_files"
