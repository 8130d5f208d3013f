"""`continuum`: pin an agent's KV through its tool call for a time-to-live."""

from __future__ import annotations

from collections.abc import Sequence

from legato.scheduler.baselines.sticky import Affinity
from legato.scheduler.events import CallArrived, RunFinished, RunStarted, ToolFinished, ToolStarted
from legato.scheduler.policy import BasePolicy, ClusterView, Decision, Dispatch, Pin, PolicyTraits

DEFAULT_TTL_S = 2.0  # before any latency of a tool has been observed
TTL_FACTOR = 2.0  # TTL = factor x mean observed latency of the tool: covers most of a lognormal
MAX_TTL_S = 30.0


class Continuum(BasePolicy):
    """Reproduces Continuum (Li et al., 2025): when an agent's LLM call ends in a tool call, its
    KV cache is pinned with a time-to-live derived from that tool's observed latency, so the next
    turn finds it resident instead of recomputing it; a pin that outlives the tool simply expires.
    Requests are ordered by their program's arrival (program-level FCFS), and a program stays on
    one replica.

    Simplifies: the TTL is a fixed multiple of the tool's mean latency (capped at 30 s) rather than
    Continuum's cost-benefit choice from the latency distribution and the prefix length; pinning
    happens regardless of current memory pressure."""

    name = "continuum"
    traits = PolicyTraits(eviction="lru")

    def __init__(self) -> None:
        self._affinity = Affinity()
        self._order: dict[str, int] = {}
        self._seen = 0
        self._lat: dict[str, tuple[float, int]] = {}

    def on_run_started(self, event: RunStarted, now: float, view: ClusterView) -> Sequence[Decision]:
        self._seen += 1
        self._order[event.run_id] = self._seen
        return ()

    def on_call(self, event: CallArrived, now: float, view: ClusterView) -> Sequence[Decision]:
        call = event.call
        replica = self._affinity.route(call.run_id, view)
        return (Dispatch(call.call_id, replica, priority=self._order.get(call.run_id, 0)),)

    def on_tool_started(self, event: ToolStarted, now: float, view: ClusterView) -> Sequence[Decision]:
        s, n = self._lat.get(event.tool, (0.0, 0))
        ttl = min(MAX_TTL_S, TTL_FACTOR * s / n) if n else DEFAULT_TTL_S
        return (Pin(event.run_id, ttl),)

    def on_tool_finished(self, event: ToolFinished, now: float, view: ClusterView) -> Sequence[Decision]:
        s, n = self._lat.get(event.tool, (0.0, 0))
        self._lat[event.tool] = (s + event.duration_s, n + 1)
        return ()

    def on_run_finished(self, event: RunFinished, now: float, view: ClusterView) -> Sequence[Decision]:
        self._affinity.forget(event.run_id)
        self._order.pop(event.run_id, None)
        return ()
