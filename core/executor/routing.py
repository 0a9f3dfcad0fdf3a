"""Which problems go to which actor, in which order.

Problems are handed out in chunks of consecutive problems, in the task's order, to
whichever actor asks for work next (pull-based: a slow actor never holds up the others,
and a dead one's chunks simply go back to the queue).

Why this order serves the engines' prefix caches: in step-level search every call of a
problem re-sends its prompt and its partial solution, and all of a problem's branches run
on the actor that holds the problem, so the prefixes that repeat most stay on one engine
by construction. The prefix that problems share with each other (system prompt, few-shot
examples, one template for a whole task) is cached by each engine after its first chunk;
consecutive problems of a task (one subject, one level, one data file) share the most of
it, which is why chunks are runs of neighbours rather than a round-robin deal. Pinning a
problem to an actor by a hash of its id would buy nothing more: every run (and every job
of a sweep) starts its own actors with empty caches, and it would cost the balance that
pulling gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def chunks(items: Sequence[T], size: int) -> list[list[T]]:
    """`items` in consecutive runs of at most `size`, in order."""
    if size < 1:
        raise ValueError("chunk size must be >= 1")
    return [list(items[i : i + size]) for i in range(0, len(items), size)]
