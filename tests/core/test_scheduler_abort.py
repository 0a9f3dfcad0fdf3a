"""An aborted request still waiting in a batched backend's queue never reaches it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from ttc.cancel import Abort
from ttc.scheduler import Batched, Scheduler
from ttc.testing import PROMPT_END, ScriptedBackend, ScriptedBackendConfig
from ttc.types import GenerateRequest, GenerateResult, Sampling


class CountingBackend(ScriptedBackend):
    """The scripted double, counting the requests it was handed."""

    def __init__(self, config: ScriptedBackendConfig) -> None:
        super().__init__(config)
        self.seen = 0

    def generate_batch(self, requests: Sequence[GenerateRequest]) -> list[GenerateResult]:
        self.seen += len(requests)
        return super().generate_batch(requests)


def test_queued_requests_of_a_set_abort_are_answered_cancelled_and_unspent() -> None:
    backend = CountingBackend(ScriptedBackendConfig(delay_s=0.2))
    abort = Abort()

    async def go() -> list[Batched[GenerateResult] | BaseException]:
        sched = Scheduler(backend, None, max_batch_size=1, max_wait_s=0.0)
        reqs = [
            GenerateRequest(f"p{i} answer=1\n{PROMPT_END}", None, Sampling(n=2), abort=abort)
            for i in range(3)
        ]
        call = asyncio.ensure_future(sched.generate(reqs))
        await asyncio.sleep(0.05)  # the first batch is running, two wait in the queue
        abort.set()
        return await call

    first, second, third = asyncio.run(go())
    assert backend.seen == 1
    assert isinstance(first, Batched) and first.result.generations[0].finish_reason != "cancelled"
    for out in (second, third):
        assert isinstance(out, Batched)
        assert [g.finish_reason for g in out.result.generations] == ["cancelled"] * 2
        assert out.result.usage.prompt_tokens == out.result.usage.completion_tokens == 0
    assert abort.stopped == 4
