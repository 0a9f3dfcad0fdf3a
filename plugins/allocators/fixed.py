"""`fixed`: every problem gets the same budget (the top-level `budget` node)."""

from __future__ import annotations

from dataclasses import dataclass

from ttc.budget import Budget
from ttc.config import AllocatorConfig
from ttc.interfaces import Allocator
from ttc.types import Problem


@dataclass
class FixedAllocatorConfig(AllocatorConfig):
    name: str = "fixed"


class FixedAllocator(Allocator):
    name = "fixed"

    def budget_for(self, problem: Problem) -> Budget:
        return self.budget
