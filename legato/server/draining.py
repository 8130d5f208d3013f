"""Graceful drain on SIGTERM: `legato serve` stops the way a rolling deploy needs it to.

uvicorn alone closes its sockets at once on SIGTERM and the lifespan then stops every run
mid-step (a run inside a side-effecting tool ends `interrupted` on the next start). Here the
first SIGTERM (or SIGINT) starts a drain instead, in this order:

1. `/readyz` answers 503 (`state.ready = False`): a load balancer stops sending new work;
2. `POST /v1/runs` answers 503 (the run manager stops admitting); reads, SSE and client-tool
   results are still served;
3. the executor's `DrainGate` holds every step that has not started and waits, up to
   `--drain-timeout` seconds, for the steps in flight that cannot be stopped safely (LLM calls,
   tools neither pure nor idempotent) to finish and be journaled;
4. uvicorn stops; runs still in flight are suspended, not finished, and the next server (or,
   on Redis, another instance) resumes them from their journal. A run waiting on a client tool
   waits again there for the same call id, so the client's result is accepted after the restart.

A second signal during the drain stops at once (as uvicorn does on a second Ctrl-C).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from types import FrameType
from typing import Any

import uvicorn

from legato.server.state import ServerState

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServerState, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.state = state
        self.drain_timeout_s = drain_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[Any] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_task is not None or self._loop is None or self.should_exit:
            super().handle_exit(sig, frame)  # a second signal: stop now
            return
        if sig not in (signal.SIGTERM, signal.SIGINT):
            super().handle_exit(sig, frame)
            return
        self._captured_signals.append(sig)  # uvicorn re-raises it once stopped, as it would
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        if self._drain_task is None:
            self._drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        runs = self.state.runs
        self.state.ready = False
        log.info("draining: %d run(s) in flight, up to %.0fs", runs.active_count(), self.drain_timeout_s)
        try:
            left = await runs.drain(self.drain_timeout_s)
        finally:
            self.should_exit = True
        if left:
            log.warning("drain timeout: %d step(s) still running are stopped", left)
        log.info("drained: %d run(s) suspended, to resume on the next start", runs.active_count())
