"""Per-run event streams: what a client watching a run sees (node started / finished, tokens,
tool output, status changes, run finished).

Subscribers get an anyio memory object stream with a bounded buffer. Publishing never blocks the
run: when a subscriber's buffer is full the event is dropped *for that subscriber* and counted in
`Subscription.dropped` (a slow client must not stall thousands of runs). When a run finishes,
its subscriptions end after the `run_finished` event.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import anyio
from anyio.streams.memory import MemoryObjectSendStream

EventKind = Literal[
    "run_started",
    "status",
    "node_started",
    "node_finished",
    "token",
    "tool_started",
    "tool_output",
    "run_finished",
]


@dataclass(frozen=True, slots=True)
class RunEvent:
    run_id: str
    seq: int
    kind: EventKind
    node: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    at: float = 0.0  # wall-clock seconds


class Subscription:
    """One subscriber's view of a run: `async for event in sub` until the run finishes."""

    def __init__(self, hub: EventHub, run_id: str, max_buffer: int) -> None:
        self.run_id = run_id
        self.dropped = 0
        # Optional: takes a `token` event in the publishing task while this subscriber waits
        # with nothing queued (order kept), saving a task switch per token.
        self.direct: Callable[[RunEvent], None] | None = None
        self._hub = hub
        self._send: MemoryObjectSendStream[RunEvent]
        self._send, self.receive = anyio.create_memory_object_stream[RunEvent](max_buffer)

    def _offer(self, event: RunEvent) -> None:
        if self.direct is not None and event.kind == "token" and self._idle():
            self.direct(event)
            return
        try:
            self._send.send_nowait(event)
        except anyio.WouldBlock:
            self.dropped += 1
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass

    def _idle(self) -> bool:
        """The subscriber waits in `receive` and nothing is queued or handed over to it."""
        stats = self.receive.statistics()
        return stats.current_buffer_used == 0 and stats.tasks_waiting_receive > 0

    def _end(self) -> None:
        self._send.close()

    def close(self) -> None:
        self._hub._remove(self)
        self._send.close()
        self.receive.close()

    def __aiter__(self) -> AsyncIterator[RunEvent]:
        return self.receive.__aiter__()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class EventHub:
    """Routes run events to the subscribers of that run. Cheap when nobody listens."""

    def __init__(self) -> None:
        self._subs: dict[str, list[Subscription]] = {}
        self._seq = itertools.count()

    def subscribe(self, run_id: str, max_buffer: int = 1024) -> Subscription:
        if max_buffer < 1:
            raise ValueError("max_buffer must be >= 1")
        sub = Subscription(self, run_id, max_buffer)
        self._subs.setdefault(run_id, []).append(sub)
        return sub

    def has_subscribers(self, run_id: str) -> bool:
        return run_id in self._subs

    def publish(self, run_id: str, kind: EventKind, node: str | None = None, **data: Any) -> None:
        subs = self._subs.get(run_id)
        if not subs:
            return
        event = RunEvent(run_id, next(self._seq), kind, node, data, time.time())
        for sub in list(subs):
            sub._offer(event)
        if kind == "run_finished":
            for sub in self._subs.pop(run_id, []):
                sub._end()

    def _remove(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.run_id)
        if subs and sub in subs:
            subs.remove(sub)
            if not subs:
                del self._subs[sub.run_id]
