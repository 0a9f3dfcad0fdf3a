"""beam_search and dvts: steps by delimiter or token count, finished beams kept, and
DVTS's subtrees independent and greedy."""

from __future__ import annotations

import itertools

import sim

from ttc.strategies.beam_search import BeamSearch, BeamSearchConfig
from ttc.strategies.dvts import Dvts, DvtsConfig

PROBLEMS = dict(steps=4, q=0.7, wrong="1:0.5,2:0.5")


def test_steps_end_at_the_delimiter_and_finished_beams_are_kept() -> None:
    problems = sim.make_problems(30, seed=81, **PROBLEMS)  # type: ignore[arg-type]
    out = sim.solve_all(BeamSearch(BeamSearchConfig(beam_width=3, expansions=2)), problems)
    for o in out:
        for b in o.ctx.branches.values():
            if b.parent_id is not None and not b.finished:
                assert b.step_texts[-1].endswith("\n\n") and "\n\n" not in b.step_texts[-1][:-2]
        assert o.solution.trace["ended_by"] == "finished"
        assert o.solution.trace["finished"] >= 3
        assert o.solution.branch is not None and o.solution.branch.finished
    # the right answer scores 0.9 against 0.1: with 3 finished beams it is found often
    assert sim.accuracy(out) >= 0.7


def test_token_count_steps_continue_past_the_cut() -> None:
    problems = sim.make_problems(10, seed=82, **PROBLEMS)  # type: ignore[arg-type]
    cfg = BeamSearchConfig(beam_width=2, expansions=2, step_delimiter="", step_tokens=40)
    out = sim.solve_all(BeamSearch(cfg), problems)
    for o in out:
        steps = [b for b in o.ctx.branches.values() if b.parent_id is not None]
        assert all(b.new_tokens <= 40 for b in steps)
        # a step cut at 40 tokens is not the end of the solution: the search went deeper
        assert max(b.step for b in steps) >= 3  # a solution is ~100 tokens
        assert o.solution.answer is not None


def test_dvts_subtrees_are_independent_greedy_chains() -> None:
    problems = sim.make_problems(30, seed=83, **PROBLEMS)  # type: ignore[arg-type]
    out = sim.solve_all(Dvts(DvtsConfig(n=8, width=2)), problems)
    for o in out:
        assert o.solution.trace["subtrees"] == 4
        kept = [b for b in o.ctx.branches.values() if b.extra.get("kept")]
        by_tree: dict[int, list[int]] = {}
        for b in sorted(kept, key=lambda b: b.step):
            by_tree.setdefault(b.extra["subtree"], []).append(b.id)
        assert len(by_tree) == 4
        for chain in by_tree.values():
            # each subtree keeps one node per step, each the child of the previous one
            for parent, child in itertools.pairwise(chain):
                assert o.ctx.branches[child].parent_id == parent
            # ... and, past the shared root, it was the best of its siblings
            for node_id in chain[1:]:
                node = o.ctx.branches[node_id]
                siblings = [b for b in o.ctx.branches.values() if b.parent_id == node.parent_id]
                assert len(siblings) == 2
                assert (node.score or 0.0) == max(b.score or 0.0 for b in siblings)
        first = {o.ctx.branches[c[0]].id for c in by_tree.values()}
        assert len(first) == 4  # the subtrees start from different first steps
    assert sim.accuracy(out) >= 0.7
