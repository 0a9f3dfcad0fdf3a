"""`arith`: procedurally generated arithmetic, with every intermediate value known.

The task needs no data and no network, and a tiny model solves a graded share of it, so
it is the default for tests, benchmarks and strategy comparisons. Levels, calibrated on
SmolLM2-135M with a plain prompt (pass@1 -> pass@8):

1. one-digit products, "7 * 8"                          (~0.3 -> ~1.0)
2. sums of two two-digit numbers, "34 + 58"             (~0.17 -> ~0.42)
3. sums of three two-digit numbers                      (~0 for that model)
4. and up: `level - 2` operations (+, -, *) on numbers up to 12 (plus 3 per level past
   4), some parenthesised: multi-step problems for larger models.

Every problem stores its exact intermediate results in `metadata["steps"]` (a list of
`{"expr": "3+4", "value": 7}` in evaluation order), so `check_steps` can grade each step
of a solution by rule (the `rule` process reward builds on it).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

from ttc.config import bounded
from ttc.errors import ConfigError, DataError
from ttc.plugins.tasks.base import Item, PromptedTask, PromptedTaskConfig
from ttc.plugins.tasks.few_shot import Shot, final_line
from ttc.types import Problem

MAX_LEVEL = 8
_PRECEDENCE = {"+": 1, "-": 1, "*": 2}


@dataclass
class ArithTaskConfig(PromptedTaskConfig):
    n_problems: int = bounded(32, ge=1, help="how many problems to generate")
    levels: Any = field(default_factory=lambda: [1, 2, 3, 4])
    """A level (1-8) or a list of levels; problems cycle through them in order."""


@dataclass(frozen=True, slots=True)
class _Node:
    """An expression tree node: a number (`op` None) or an operation on two children."""

    value: int
    op: str | None = None
    left: _Node | None = None
    right: _Node | None = None

    def render(self, spaced: bool = True) -> str:
        if self.op is None or self.left is None or self.right is None:
            return str(self.value)
        prec = _PRECEDENCE[self.op]
        left = self.left.render(spaced)
        if self.left.op is not None and _PRECEDENCE[self.left.op] < prec:
            left = f"({left})"
        right = self.right.render(spaced)
        # A right operand of equal precedence is parenthesised even where algebra would not
        # need it ("a + (b + c)"), so the written order is the order of `steps`.
        if self.right.op is not None and _PRECEDENCE[self.right.op] <= prec:
            right = f"({right})"
        sep = f" {self.op} " if spaced else self.op
        return f"{left}{sep}{right}"


def _combine(op: str, left: _Node, right: _Node) -> _Node:
    if op == "-" and left.value < right.value:
        left, right = right, left  # keep every intermediate value non-negative
    value = {"+": left.value + right.value, "-": left.value - right.value}.get(
        op, left.value * right.value
    )
    return _Node(value, op, left, right)


def _random_tree(rng: random.Random, n_ops: int, high: int) -> _Node:
    """A random expression with `n_ops` operations on numbers in [2, high]."""
    if n_ops == 0:
        return _Node(rng.randint(2, high))
    left_ops = rng.randint(0, n_ops - 1)
    left = _random_tree(rng, left_ops, high)
    right = _random_tree(rng, n_ops - 1 - left_ops, high)
    # Products of two compound operands grow fast; prefer a sum or difference there.
    both_compound = left.op is not None and right.op is not None
    op = rng.choice(["+", "-"] if both_compound and rng.random() < 0.5 else ["+", "-", "*"])
    return _combine(op, left, right)


def generate(level: int, rng: random.Random) -> _Node:
    """One expression of a level (see the module docstring)."""
    if level == 1:
        return _combine("*", _Node(rng.randint(2, 9)), _Node(rng.randint(2, 9)))
    if level == 2:
        return _combine("+", _Node(rng.randint(10, 99)), _Node(rng.randint(10, 99)))
    if level == 3:
        first = _combine("+", _Node(rng.randint(10, 99)), _Node(rng.randint(10, 99)))
        return _combine("+", first, _Node(rng.randint(10, 99)))
    high = 12 + 3 * (level - 4)
    tree = _random_tree(rng, n_ops=level - 2, high=high)
    # Multi-step levels are about operator order: redraw until parentheses show up.
    for _ in range(100):
        if "(" in tree.render():
            break
        tree = _random_tree(rng, n_ops=level - 2, high=high)
    return tree


def steps_of(node: _Node) -> list[dict[str, Any]]:
    """The operations of an expression in evaluation order, each with operands already
    replaced by their values: `(3 + 4) * 5` -> `[{"expr": "3+4", "value": 7},
    {"expr": "7*5", "value": 35}]`."""
    if node.op is None or node.left is None or node.right is None:
        return []
    return [
        *steps_of(node.left),
        *steps_of(node.right),
        {"expr": f"{node.left.value}{node.op}{node.right.value}", "value": node.value},
    ]


def _levels(raw: Any) -> list[int]:
    values: list[Any]
    if isinstance(raw, int | str):  # a str is iterable but is never a list of levels
        values = [raw]
    else:
        try:
            values = list(raw)  # a list, tuple or OmegaConf ListConfig
        except TypeError:
            values = [raw]
    if not values or not all(
        isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_LEVEL for v in values
    ):
        raise ConfigError(
            f"task.levels={raw!r} is not valid; expected a level 1-{MAX_LEVEL} or a list of them",
            key="task.levels",
            value=raw,
            hint="e.g. task.levels=2 or task.levels=[1,2,3]",
        )
    return values


class ArithTask(PromptedTask):
    """Seeded arithmetic problems; the same seed gives the same problems."""

    name = "arith"
    config: ArithTaskConfig

    def __init__(self, config: ArithTaskConfig) -> None:
        super().__init__(config)
        self.levels = _levels(config.levels)
        self._shots: dict[tuple[int, int, frozenset[str]], list[Shot]] = {}

    def items(self) -> list[Item]:
        items = []
        for i in range(self.config.n_problems):
            level = self.levels[i % len(self.levels)]
            # One generator per problem: problem i is the same whatever n_problems is.
            rng = random.Random(f"arith:{self.config.seed}:{level}:{i}")
            tree = generate(level, rng)
            expression = tree.render()
            items.append(
                Item(
                    id=f"arith-l{level}-{i:04d}",
                    question=f"What is {expression}?",
                    reference=str(tree.value),
                    metadata={"level": level, "expression": expression, "steps": steps_of(tree)},
                )
            )
        return items

    def shots(self, item: Item, k: int, evaluated: frozenset[str]) -> list[Shot]:
        """`k` generated problems of the item's level, solved step by step; drawn from a
        generator stream of their own (seeded by `seed`), skipping any question that is
        being evaluated. Every problem of a level shows the same examples, so their
        prompts share a prefix."""
        level = int(item.metadata["level"])
        key = (level, k, evaluated)
        if key not in self._shots:
            self._shots[key] = self._draw_shots(level, k, evaluated)
        return self._shots[key]

    def _draw_shots(self, level: int, k: int, evaluated: frozenset[str]) -> list[Shot]:
        shots: list[Shot] = []
        seen = set(evaluated)
        tries = 200 * k
        for j in range(tries):
            tree = generate(level, random.Random(f"arith-shot:{self.config.seed}:{level}:{j}"))
            question = f"What is {tree.render()}?"
            if question in seen:
                continue
            seen.add(question)
            lines = [_spelled(step["expr"]) + f" = {step['value']}" for step in steps_of(tree)]
            lines.append(final_line(str(tree.value), self.config.answer_format))
            shots.append(Shot(question=question, solution="\n".join(lines)))
            if len(shots) == k:
                return shots
        raise ConfigError(
            f"task.few_shot={k}: found only {len(shots)} level-{level} problems that are not "
            f"among the {len(evaluated)} being evaluated",
            key="task.few_shot",
            value=k,
            hint="use fewer examples (task.few_shot) or fewer problems (task.n_problems)",
        )


def _spelled(expr: str) -> str:
    """`3+4` as `3 + 4`, as the questions write it."""
    return re.sub(r"(?<=\d)([-+*])", r" \1 ", expr)


# -- rule-based step checking -------------------------------------------------------------

_NUM = r"-?\d+(?:,\d{3})*(?:\.\d+)?"
# A number that a step *states as a result*: after "=", and not itself the start of a
# further expression ("= 12 + 5" states nothing yet; "= 17" does).
_RESULT_RE = re.compile(r"=\s*\$?\s*(" + _NUM + r")(?![\d.,]*\s*(?:[-+*/\u00d7\u00f7^(]|x\s))")
_FINAL_RE = re.compile(r"(?:\\boxed\s*\{|####|answer is:?)\s*\$?\s*(" + _NUM + r")")


def _value(number: str) -> float:
    return float(number.replace(",", ""))


def check_steps(problem: Problem, step_texts: list[str] | tuple[str, ...]) -> list[float]:
    """Grade each step of a solution by rule: 1.0 when every result it states is correct.

    A stated result is a number after `=` that ends its expression; it is correct when it
    is one of the problem's intermediate values (`metadata["steps"]`). A final answer
    (`\\boxed{n}`, `#### n`, "answer is n") must equal the problem's value. A step that
    states no result (prose, restating the question) has nothing wrong in it: 1.0.
    """
    steps = problem.metadata.get("steps")
    if not steps:
        raise DataError(
            f"problem '{problem.id}' has no metadata['steps'] to check against",
            hint="rule-based step checking needs task=arith (or a task that stores steps)",
        )
    allowed = {float(step["value"]) for step in steps}
    final = float(steps[-1]["value"])
    scores = []
    for text in step_texts:
        results = [_value(n) for n in _RESULT_RE.findall(text)]
        finals = [_value(n) for n in _FINAL_RE.findall(text)]
        ok = all(r in allowed for r in results) and all(f == final for f in finals)
        scores.append(1.0 if ok else 0.0)
    return scores
