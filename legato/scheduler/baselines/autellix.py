"""`autellix`: program-level least attained service (PLAS) and its load balancer."""

from __future__ import annotations

import math
from collections.abc import Sequence

from legato.scheduler.events import CallArrived, CallFinished, RunFinished
from legato.scheduler.policy import (
    BasePolicy,
    ClusterView,
    Decision,
    Dispatch,
    PolicyTraits,
    SetPriority,
    least_loaded,
)

QUANTUM_TOKENS = 2048.0  # service of the first priority level; each next level doubles it
LOCALITY_TOKENS = 8192.0  # programs that attained more than this stay on their replica
STARVE_S = 30.0  # a call queued this long is promoted to the top level (anti-starvation)


class Autellix(BasePolicy):
    """Reproduces Autellix's PLAS (Luo et al., 2025): a call's priority is the service its whole
    program has attained so far (tokens of its finished calls), discretised into levels whose
    widths double, so short programs overtake long ones without knowing their lengths; calls that
    wait too long are promoted (anti-starvation). Its load balancer sends calls of programs that
    have attained little service to the least-loaded replica and keeps longer programs on their
    replica for KV locality.

    Simplifies: service is counted in tokens (prompt + output) rather than measured engine time;
    the engine applies priorities when admitting and when choosing preemption victims (as vLLM's
    priority scheduler does), not by preempting running calls on arrival."""

    name = "autellix"
    traits = PolicyTraits(eviction="lru", tick_s=5.0)

    def __init__(self) -> None:
        self._service: dict[str, float] = {}
        self._home: dict[str, int] = {}
        self._queued: dict[str, float] = {}  # run -> when its oldest waiting call arrived

    def _level(self, run_id: str) -> int:
        s = self._service.get(run_id, 0.0)
        return 1 + max(0, math.floor(math.log2(1.0 + s / QUANTUM_TOKENS)))

    def on_call(self, event: CallArrived, now: float, view: ClusterView) -> Sequence[Decision]:
        call = event.call
        run = call.run_id
        home = self._home.get(run)
        if home is None or self._service.get(run, 0.0) < LOCALITY_TOKENS:
            home = least_loaded(view)
            self._home[run] = home
        self._queued.setdefault(run, now)
        return (Dispatch(call.call_id, home, priority=self._level(run)),)

    def on_call_finished(self, event: CallFinished, now: float, view: ClusterView) -> Sequence[Decision]:
        run = event.run_id
        self._service[run] = self._service.get(run, 0.0) + event.prompt_tokens + event.output_tokens
        self._queued.pop(run, None)
        return ()

    def on_tick(self, now: float, view: ClusterView) -> Sequence[Decision]:
        starved = [run for run, t in self._queued.items() if now - t >= STARVE_S]
        for run in starved:
            self._queued[run] = now
        return [SetPriority(run, 0) for run in starved]

    def on_run_finished(self, event: RunFinished, now: float, view: ClusterView) -> Sequence[Decision]:
        for d in (self._service, self._home, self._queued):
            d.pop(event.run_id, None)
        return ()
