"""`PromptedTask`: the shared base of ttc's tasks.

A subclass only says where its questions come from (`items`); the base turns them into
chat messages with a configurable system prompt and answer instruction, applies the
config's `shuffle`/`seed`/`limit`, puts `few_shot` solved examples before each question
(`ttc.plugins.tasks.few_shot`), and grades with `ttc.plugins.verifier`.
"""

from __future__ import annotations

import abc
import random
from dataclasses import dataclass, field
from typing import Any

from ttc.config import TaskConfig, bounded
from ttc.errors import ConfigError
from ttc.interfaces import Task
from ttc.plugins import verifier
from ttc.plugins.tasks import few_shot
from ttc.plugins.tasks.few_shot import Shot
from ttc.types import Problem

ANSWER_INSTRUCTIONS: dict[str, str] = {
    "boxed": "Please reason step by step, and put your final answer within \\boxed{}.",
    "hash": "Please reason step by step, and write the final answer on the last line after '####'.",
}
"""The instruction appended to every question, by `answer_format`."""


@dataclass
class PromptedTaskConfig(TaskConfig):
    system_prompt: str | None = None
    """System message sent before every question (None: no system message)."""
    answer_format: str = bounded(
        "boxed", choices=list(ANSWER_INSTRUCTIONS), help="how the model is told to mark its answer"
    )
    instruction: str | None = None
    """Replaces the answer instruction appended to each question ('' appends nothing)."""
    verify_timeout_s: float = bounded(
        verifier.DEFAULT_TIMEOUT_S, gt=0, help="seconds one math-verify comparison may take"
    )
    few_shot: int = bounded(
        0, ge=0, le=64, help="solved examples before each question (lm-eval's num_fewshot)"
    )


@dataclass(frozen=True, slots=True)
class Item:
    """One question before prompting: what a task's source yields."""

    id: str
    question: str
    reference: str | None
    metadata: dict[str, Any] = field(default_factory=dict)


class PromptedTask(Task):
    """A task whose problems are single questions with a reference answer."""

    config: PromptedTaskConfig

    @abc.abstractmethod
    def items(self) -> list[Item]:
        """Every question of the task in its natural (stable) order."""

    def instruction(self) -> str:
        if self.config.instruction is not None:
            return self.config.instruction
        return ANSWER_INSTRUCTIONS[self.config.answer_format]

    def messages(self, question: str) -> tuple[dict[str, str], ...]:
        instruction = self.instruction()
        user = f"{question}\n\n{instruction}" if instruction else question
        system = self.config.system_prompt
        head = ({"role": "system", "content": system},) if system else ()
        return (*head, {"role": "user", "content": user})

    def shots(self, item: Item, k: int, evaluated: frozenset[str]) -> list[Shot]:
        """`k` solved examples to show before `item`'s question, none of whose questions
        is in `evaluated` (the questions of the problems being solved). Tasks with a
        training split or a generator override this."""
        raise ConfigError(
            f"task.few_shot={k}: the {self.name} task has no solved examples to show",
            key="task.few_shot",
            value=k,
            hint="use task.few_shot=0 (or a task with a training split or generator)",
        )

    def load(self) -> list[Problem]:
        items = self.items()
        if self.config.shuffle:
            # A private generator: the same seed gives the same order whatever else ran.
            random.Random(self.config.seed).shuffle(items)
        if self.config.limit is not None:
            items = items[: self.config.limit]
        k = self.config.few_shot
        evaluated = frozenset(item.question for item in items)
        problems = []
        for item in items:
            metadata = {"source": self.name, "question": item.question, **item.metadata}
            if not k:
                problems.append(
                    Problem(
                        id=item.id,
                        messages=self.messages(item.question),
                        reference=item.reference,
                        metadata=metadata,
                    )
                )
                continue
            shots = self.shots(item, k, evaluated)
            instruction, system = self.instruction(), self.config.system_prompt
            problems.append(
                Problem(
                    id=item.id,
                    messages=few_shot.chat_messages(
                        shots, item.question, instruction=instruction, system=system
                    ),
                    prompt=few_shot.plain_prompt(
                        shots, item.question, instruction=instruction, system=system
                    ),
                    reference=item.reference,
                    metadata={**metadata, "few_shot": [s.question for s in shots]},
                )
            )
        return problems

    def extract_answer(self, text: str) -> str | None:
        if self.config.few_shot:
            text = few_shot.answer_part(text)
        return verifier.extract_answer(text)

    def is_correct(self, answer: str | None, problem: Problem) -> bool | None:
        if problem.reference is None:
            return None
        return verifier.is_equivalent(
            answer, problem.reference, timeout_s=self.config.verify_timeout_s
        )

    def normalize(self, answer: str) -> str:
        return verifier.normalize_answer(answer)
