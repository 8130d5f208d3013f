"""Helpers for the programs tests: a scheduler that records what the executor sends it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import anyio

from legato.engine_adapter.base import Engine, TokenChunk, Tokenizer
from legato.scheduler.events import LLMCall, ProgramEvent
from legato.scheduler.passthrough import PassthroughScheduler


class RecordingScheduler:
    """Passthrough to an engine, keeping every LLMCall and program event it sees."""

    def __init__(self, engine: Engine) -> None:
        self.inner = PassthroughScheduler(engine)
        self.calls: list[LLMCall] = []
        self.events: list[ProgramEvent] = []

    @property
    def tokenizer(self) -> Tokenizer:
        return self.inner.tokenizer

    async def generate(self, call: LLMCall) -> AsyncIterator[TokenChunk]:
        self.calls.append(call)
        async for chunk in self.inner.generate(call):
            yield chunk

    def notify(self, event: ProgramEvent) -> None:
        self.events.append(event)


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 30.0, poll_s: float = 0.01) -> None:
    """Poll `predicate` (for conditions outside our control, e.g. child processes appearing)."""
    with anyio.fail_after(timeout_s):
        while True:
            if predicate():
                return
            await anyio.sleep(poll_s)
