"""Few-shot prompts (`task.few_shot=k`, lm-eval's `num_fewshot`): k solved examples before
the question.

A problem with shots carries its prompt twice, and the backend picks the form its model
understands (`ttc.backends._text.render_problem`):

- `messages`, for a model with a chat template: each shot as a user turn (question and
  answer instruction, as the real question is asked) followed by an assistant turn with
  its worked solution, then the question (lm-eval's `fewshot_as_multiturn`);
- `prompt`, for a base model without one: the instruction once, then
  `Question: ...` / `Answer: ...` blocks separated by a blank line, ending in
  `Answer:` after the real question, so the model continues in the examples' format.

A base model that has answered often goes on with a question of its own; its answer
is cut there (`answer_part`), so what it invents after its own answer never votes.
"""

from __future__ import annotations

from dataclasses import dataclass

SHOT_SEPARATOR = "\n\n"
"""Between two question/answer blocks of a base-model prompt."""
QUESTION_LABEL = "Question:"
ANSWER_LABEL = "Answer:"


@dataclass(frozen=True, slots=True)
class Shot:
    """One solved example: a question and its worked solution, which ends by stating the
    answer in the task's answer format."""

    question: str
    solution: str


def final_line(answer: str, answer_format: str) -> str:
    """How a solved example states its answer, in the format the instruction asks for."""
    if answer_format == "hash":
        return f"#### {answer}"
    return f"The answer is \\boxed{{{answer}}}."


def chat_messages(
    shots: list[Shot], question: str, *, instruction: str, system: str | None
) -> tuple[dict[str, str], ...]:
    """The multi-turn chat of a few-shot problem (for models with a chat template)."""

    def ask(q: str) -> str:
        return f"{q}\n\n{instruction}" if instruction else q

    out: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    for shot in shots:
        out.append({"role": "user", "content": ask(shot.question)})
        out.append({"role": "assistant", "content": shot.solution})
    out.append({"role": "user", "content": ask(question)})
    return tuple(out)


def plain_prompt(
    shots: list[Shot], question: str, *, instruction: str, system: str | None = None
) -> str:
    """The completion prompt of a few-shot problem (for base models)."""
    blocks = [text for text in (system, instruction) if text]
    blocks += [f"{QUESTION_LABEL} {s.question}\n{ANSWER_LABEL} {s.solution}" for s in shots]
    blocks.append(f"{QUESTION_LABEL} {question}\n{ANSWER_LABEL}")
    return SHOT_SEPARATOR.join(blocks)


def answer_part(text: str) -> str:
    """The part of a generation that answers the question: up to the first new
    `Question:` block the model started by itself (all of it when there is none)."""
    cut = text.find(QUESTION_LABEL)
    return text if cut < 0 else text[:cut]
