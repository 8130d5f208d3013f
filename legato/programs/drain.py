"""`DrainGate`: lets a stopping server finish the steps it cannot checkpoint, and start no more.

Every step of a run (a graph node, an agent's LLM or tool call) passes the gate. While the
executor drains, a step that has not started waits at the gate (the run is suspended there when
the server stops, and the next server resumes it with nothing lost); steps already running go on.
`drain()` returns once no step is in flight that would be lost or unsafe to stop: an LLM call
(its work would be redone) or a tool that is neither pure nor idempotent (stopping it mid-flight
ends its run `interrupted`). Pure and idempotent tools, and client-tool waits, run again on resume
(idempotent ones with the same key), so a drain does not wait for them.

A step inside a step (a graph node's LLM call) is not held at the gate: a contextvar says the
task is already inside one.
"""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

_inside: contextvars.ContextVar[bool] = contextvars.ContextVar("legato_in_step", default=False)


class DrainGate:
    def __init__(self) -> None:
        self.draining = False
        self.busy = 0  # steps in flight that a drain waits for
        self._changed: anyio.Event | None = None  # created in the event loop, when draining
        self._opened: anyio.Event | None = None

    @asynccontextmanager
    async def step(self, *, waits: bool) -> AsyncIterator[None]:
        """One step; `waits`: a drain waits for it to finish (see the module doc)."""
        if self.draining and not _inside.get():
            if self._opened is None:
                self._opened = anyio.Event()
            await self._opened.wait()  # until the process stops (or `reopen`)
        token = _inside.set(True)
        self.busy += waits
        try:
            yield
        finally:
            self.busy -= waits
            _inside.reset(token)
            if waits and self._changed is not None:
                self._changed.set()

    async def drain(self, timeout_s: float) -> int:
        """Hold new steps; wait up to `timeout_s` for the waited-for ones in flight. Returns how
        many are still in flight (0: everything left can stop safely)."""
        self.draining = True
        with anyio.move_on_after(timeout_s if timeout_s > 0 else 0):
            while self.busy > 0:
                self._changed = anyio.Event()
                await self._changed.wait()
        return self.busy

    def reopen(self) -> None:
        """Let held steps go on (a drain that was called off)."""
        self.draining = False
        opened, self._opened = self._opened, None
        if opened is not None:
            opened.set()
