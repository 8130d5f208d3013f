"""The interface the executor uses for every LLM call: `CallScheduler`.

The executor never talks to an engine directly. It hands each `LLMCall` to a `CallScheduler`,
which decides when and on which engine replica the call runs (applying a pure policy object),
and tells it about the program's life (tool calls, run end) so the policy can pin, prefetch
and order calls with knowledge of the whole program.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from legato.engine_adapter.base import TokenChunk, Tokenizer
from legato.scheduler.events import LLMCall, ProgramEvent


@runtime_checkable
class CallScheduler(Protocol):
    @property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer shared by all replicas this scheduler dispatches to."""
        ...

    def generate(self, call: LLMCall) -> AsyncIterator[TokenChunk]:
        """Queue the call, run it on an engine when the policy says so, stream its tokens."""
        ...

    def notify(self, event: ProgramEvent) -> None:
        """Non-blocking: record a program event (run started, tool started/finished, run
        finished). Never awaits, never raises for unknown runs."""
        ...
