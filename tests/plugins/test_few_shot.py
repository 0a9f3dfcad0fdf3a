"""`task.few_shot=k`: solved examples before the question, in the form the model reads
(a multi-turn chat with a chat template, a Question/Answer completion prompt without)."""

from __future__ import annotations

import ast
import json
import operator
import re
from pathlib import Path
from typing import Any

import pytest

from ttc.backends._text import render_problem
from ttc.config import instantiate_config
from ttc.errors import ConfigError
from ttc.plugins.tasks.arith import ArithTask, ArithTaskConfig
from ttc.plugins.tasks.hub import (
    Gsm8kTask,
    Gsm8kTaskConfig,
    JsonlTask,
    JsonlTaskConfig,
    Math500Task,
    Math500TaskConfig,
)

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def _eval(expr: str) -> int:
    def walk(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        assert isinstance(node, ast.BinOp) and type(node.op) in _OPS, expr
        return _OPS[type(node.op)](walk(node.left), walk(node.right))

    return walk(ast.parse(expr, mode="eval").body)


def arith(**kw: Any) -> ArithTask:
    return ArithTask(ArithTaskConfig(name="arith", **kw))


def _shots_of(problem_prompt: str) -> list[tuple[str, str]]:
    """(question, answer) blocks of a base-model prompt, the asked question last."""
    blocks = problem_prompt.split("\n\n")
    pairs = []
    for b in blocks:
        if b.startswith("Question: "):
            q, _, a = b.partition("\nAnswer:")
            pairs.append((q.removeprefix("Question: "), a.strip()))
    return pairs


def test_arith_shots_are_solved_correctly_and_precede_the_question() -> None:
    problems = arith(n_problems=6, levels=[1, 2, 5], few_shot=3).load()
    for p in problems:
        pairs = _shots_of(p.prompt or "")
        assert len(pairs) == 4 and pairs[-1] == (p.metadata["question"], "")
        assert p.prompt is not None and p.prompt.endswith("\nAnswer:")
        for question, solution in pairs[:3]:
            expr = question.removeprefix("What is ").removesuffix("?")
            value = _eval(expr)
            assert solution.endswith(f"\\boxed{{{value}}}.")
            # every step line is a true equation
            for line in solution.splitlines()[:-1]:
                left, _, right = line.partition(" = ")
                assert _eval(left) == int(right)
        assert p.metadata["few_shot"] == [q for q, _ in pairs[:3]]
    # same level, same examples: their prompts share everything before the question
    l1 = [p for p in problems if p.metadata["level"] == 1]
    assert l1[0].metadata["few_shot"] == l1[1].metadata["few_shot"]
    levels = {p.metadata["level"]: p.metadata["few_shot"][0] for p in problems}
    assert len(set(levels.values())) == 3


def test_arith_shots_are_disjoint_from_the_evaluated_problems_and_seeded() -> None:
    # level 1 has only 64 distinct products: 40 evaluated ones leave few to show
    problems = arith(n_problems=40, levels=1, few_shot=8).load()
    evaluated = {p.metadata["question"] for p in problems}
    shown = set(problems[0].metadata["few_shot"])
    assert len(shown) == 8 and not shown & evaluated
    again = arith(n_problems=40, levels=1, few_shot=8).load()
    assert again[0].metadata["few_shot"] == problems[0].metadata["few_shot"]
    other = arith(n_problems=40, levels=1, few_shot=8, seed=3).load()
    assert other[0].metadata["few_shot"] != problems[0].metadata["few_shot"]
    with pytest.raises(ConfigError, match=r"task\.few_shot=30: found only"):
        arith(n_problems=60, levels=1, few_shot=30).load()


def test_chat_form_is_multi_turn_and_zero_shots_change_nothing() -> None:
    plain = arith(n_problems=2, system_prompt="Be brief.").load()
    assert all(p.prompt is None and len(p.messages) == 2 for p in plain)
    (p, _) = arith(n_problems=2, system_prompt="Be brief.", few_shot=2).load()
    roles = [m["role"] for m in p.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    assert p.messages[-1] == plain[0].messages[-1]  # the question is asked as before
    assert p.messages[2]["content"].endswith(
        f"\\boxed{{{_eval(p.messages[1]['content'].split('?')[0].removeprefix('What is '))}}}."
    )
    assert p.prompt is not None and p.prompt.startswith("Be brief.\n\nPlease reason")


def test_hash_format_examples_end_with_the_hash_line() -> None:
    (p,) = arith(n_problems=1, levels=2, few_shot=1, answer_format="hash").load()
    _, solution = _shots_of(p.prompt or "")[0]
    assert re.search(r"\n#### \d+$", solution)


def _tokenizer(chat: bool) -> Any:
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    if chat:
        fast.chat_template = (
            "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>"
            "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
        )
    return fast


def test_backends_render_the_chat_with_a_template_and_the_plain_prompt_without() -> None:
    (p,) = arith(n_problems=1, few_shot=2).load()
    base = render_problem(_tokenizer(chat=False), p, None)
    assert base == p.prompt and "<user>" not in base
    chat = render_problem(_tokenizer(chat=True), p, None)
    assert chat.count("<user>") == 3 and chat.count("<assistant>") == 3
    assert "Question:" not in chat and chat.endswith("</user><assistant>")


def test_a_base_models_own_next_question_does_not_vote() -> None:
    task = arith(n_problems=1, few_shot=2)
    text = " 3 * 4 = 12\nThe answer is \\boxed{12}.\n\nQuestion: What is 2 * 2?\nAnswer: \\boxed{4}"
    assert task.extract_answer(text) == "12"
    assert arith(n_problems=1).extract_answer(text) == "4"  # without shots: the last box


def test_config_key_is_checked_at_compose_time() -> None:
    cfg = instantiate_config(ArithTaskConfig, {"name": "arith", "few_shot": 2}, "task")
    assert cfg.few_shot == 2
    with pytest.raises(ConfigError, match="few_shot"):
        instantiate_config(ArithTaskConfig, {"name": "arith", "few_shot": -1}, "task")


def _write(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_gsm8k_shots_from_a_training_file(tmp_path: Path) -> None:
    def row(i: int) -> dict[str, Any]:
        return {
            "question": f"Ann has {i} apples and buys 2. How many?",
            "answer": f"She has {i} + 2 = <<{i}+2={i + 2}>>{i + 2} apples.\n#### {i + 2}",
        }

    test = _write(tmp_path / "test.jsonl", [row(i) for i in range(3)])
    train = _write(tmp_path / "train.jsonl", [row(i) for i in range(10)])
    cfg = Gsm8kTaskConfig(name="gsm8k", data_files=test, few_shot_files=train, few_shot=4)
    problems = Gsm8kTask(cfg).load()
    pairs = _shots_of(problems[0].prompt or "")
    asked = {p.metadata["question"] for p in problems}
    assert len(pairs) == 5 and not {q for q, _ in pairs[:4]} & asked
    for question, solution in pairs[:4]:
        i = int(question.split()[2])
        assert solution == f"She has {i} + 2 = {i + 2} apples.\nThe answer is \\boxed{{{i + 2}}}."


def test_tasks_without_examples_say_how_to_get_them(tmp_path: Path) -> None:
    data = _write(tmp_path / "m.jsonl", [{"problem": "1+1?", "answer": "2", "unique_id": "a"}])
    with pytest.raises(ConfigError, match="math500 task has no solved examples"):
        Math500Task(Math500TaskConfig(name="math500", data_files=data, few_shot=1)).load()
    rows = [{"question": f"q{i}", "answer": str(i), "solution": f"s{i}"} for i in range(3)]
    mine = _write(tmp_path / "mine.jsonl", rows)
    with pytest.raises(ConfigError, match="needs a file of solved examples"):
        JsonlTask(JsonlTaskConfig(name="jsonl", data_files=mine, few_shot=1)).load()
    cfg = JsonlTaskConfig(name="jsonl", data_files=mine, few_shot_files=mine, few_shot=2)
    with pytest.raises(ConfigError, match="only 0 solved examples"):
        JsonlTask(cfg).load()  # every example is a question being evaluated
    cfg = JsonlTaskConfig(name="jsonl", data_files=mine, few_shot_files=mine, few_shot=2, limit=1)
    (p,) = JsonlTask(cfg).load()
    shown = _shots_of(p.prompt or "")[:2]
    assert len(shown) == 2 and "q0" not in {q for q, _ in shown}
    for q, a in shown:
        i = q.removeprefix("q")
        assert a == f"s{i}\nThe answer is \\boxed{{{i}}}."
