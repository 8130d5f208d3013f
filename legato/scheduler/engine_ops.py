"""How the real-time scheduler talks to its engines without ever blocking a policy decision.

Nothing in `PolicyScheduler.notify` awaits. Two lanes carry engine operations:

- the *control lane*, one task that runs queued operations in order (capacity refreshes,
  coalesced: at most one is queued at a time), and
- *cache operations* (pin, unpin, next-use hint, prefetch), each started at once as a task of
  its own, so they reach the engine in decision order within one event-loop turn instead of one
  engine round trip per queued operation.

Every operation runs under the control timeout; a failure is counted (`control_errors`) and
logged, never raised: an engine hiccup must not take the scheduler down. All tasks live in the
scheduler's task group and end with it.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Awaitable, Callable

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from legato.scheduler.runtime_state import SchedulerState

log = logging.getLogger(__name__)

Op = Callable[[], Awaitable[None]]


class EngineOps:
    """The two lanes of engine operations of one scheduler (see the module docstring)."""

    def __init__(self, state: SchedulerState, control_timeout_s: float) -> None:
        self._s = state
        self.control_timeout_s = control_timeout_s
        self._tg: TaskGroup | None = None
        self._send: MemoryObjectSendStream[Op] | None = None
        self._closed = False
        self._refresh_queued = False
        self._cache_ops = 0  # cache operations on their way to an engine
        self._cache_idle: anyio.Event | None = None

    def start(self, tg: TaskGroup) -> None:
        send, recv = anyio.create_memory_object_stream[Op](max_buffer_size=math.inf)
        self._send = send
        self._cache_idle = anyio.Event()
        self._cache_idle.set()
        self._tg = tg
        tg.start_soon(self._control_loop, recv)

    def close(self) -> None:
        """No new operations; the control lane drains what is queued, then ends."""
        self._closed = True
        if self._send is not None:
            self._send.close()

    async def _control_loop(self, recv: MemoryObjectReceiveStream[Op]) -> None:
        async with recv:
            async for op in recv:
                await self.guarded(op, "control")

    async def guarded(self, op: Op, what: str) -> None:
        """Run an engine operation with the control timeout; count and log a failure."""
        try:
            with anyio.fail_after(self.control_timeout_s):
                await op()
        except Exception:
            self._s.stats["control_errors"] += 1
            log.exception("scheduler %s operation failed", what)

    def queue(self, op: Op) -> None:
        """Run `op` on the control lane, after everything queued before it."""
        if self._send is None or self._closed:
            return
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._send.send_nowait(op)

    def queue_refresh(self) -> None:
        """Refresh every engine's capacity on the control lane (coalesced)."""
        if self._refresh_queued:
            return
        self._refresh_queued = True
        s = self._s

        async def refresh() -> None:
            self._refresh_queued = False
            for i, engine in enumerate(s.engines):
                s.capacity[i] = await engine.capacity()

        self.queue(refresh)

    def cache_op(self, op: Op) -> None:
        """Start a pin / unpin / hint / prefetch now, as its own task, not behind the control lane.

        Why: the control lane awaits one engine round trip per operation, and a torch engine
        answers between steps, so a pin queued behind k operations reached the engine k steps
        after the decision, long after those steps could evict the blocks. Tasks started here
        begin in FIFO order on the next event-loop turn and each one hands its command to the
        engine before its first await (`TorchEngine` queues commands synchronously), so the
        engine sees them in decision order, all before its next step."""
        if self._tg is None or self._closed:
            return
        self._cache_ops += 1
        if self._cache_idle is not None and self._cache_idle.is_set():
            self._cache_idle = anyio.Event()
        self._tg.start_soon(self._run_cache_op, op)

    async def _run_cache_op(self, op: Op) -> None:
        try:
            await self.guarded(op, "cache")
        finally:
            self._cache_ops -= 1
            if self._cache_ops == 0 and self._cache_idle is not None:
                self._cache_idle.set()

    async def settle(self) -> None:
        """Wait until every engine operation started so far (pins, hints, refreshes) is done."""
        done = anyio.Event()

        async def mark() -> None:
            done.set()

        self.queue(mark)
        if self._send is None or self._closed:
            return
        with anyio.fail_after(self.control_timeout_s):
            await done.wait()
            while self._cache_idle is not None and not self._cache_idle.is_set():
                await self._cache_idle.wait()


__all__ = ["EngineOps", "Op"]
