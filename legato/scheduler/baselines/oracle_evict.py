"""`oracle-evict`: clairvoyant eviction order on an otherwise stock engine (a reference, not a bound)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from legato.scheduler.baselines.sticky import Affinity
from legato.scheduler.events import CallArrived, CallFinished, RunFinished, ToolStarted
from legato.scheduler.policy import (
    BasePolicy,
    ClusterView,
    Decision,
    Dispatch,
    FutureOracle,
    NextUse,
    PolicyTraits,
)


class OracleEvict(BasePolicy):
    """FCFS scheduling with Bélády's eviction order: among evictable cached blocks, those whose
    next use is furthest in the future go first, using the *exact* future (the simulator's
    oracle knows when each tool step ends and whether the program calls the LLM again).
    Programs stay on their first replica. No other policy may see the future; this one shows
    how much a perfect eviction order alone is worth (SAGA reports 1.31x over LRU).

    It is not a bound on scheduling: admission and preemption stay vLLM's, and under memory
    pressure preemption of running calls, which it does not change, can dominate (`infinite-kv`
    is the bound). Next use is per program (a program's whole KV gets its next call's time);
    prefixes shared by several programs are evicted last, in LRU order. The hint is refreshed
    when a call arrives, when one finishes (the driver records when the step's tool ends, or
    that a dependent call follows at once, before it reports the finish) and when a tool
    starts."""

    name = "oracle-evict"
    traits = PolicyTraits(eviction="next-use", oracle=True)

    def __init__(self) -> None:
        self._affinity = Affinity()
        self._oracle: FutureOracle | None = None

    def set_oracle(self, oracle: FutureOracle) -> None:
        self._oracle = oracle

    def _hint(self, run_id: str, now: float) -> list[Decision]:
        if self._oracle is None:
            return []
        return [NextUse(run_id, self._oracle.next_use_s(run_id, now))]

    def on_call(self, event: CallArrived, now: float, view: ClusterView) -> Sequence[Decision]:
        call = event.call
        replica = self._affinity.route(call.run_id, view)
        return [Dispatch(call.call_id, replica), *self._hint(call.run_id, now)]

    def on_call_finished(self, event: CallFinished, now: float, view: ClusterView) -> Sequence[Decision]:
        return self._hint(event.run_id, now)

    def on_tool_started(self, event: ToolStarted, now: float, view: ClusterView) -> Sequence[Decision]:
        return self._hint(event.run_id, now)

    def on_run_finished(self, event: RunFinished, now: float, view: ClusterView) -> Sequence[Decision]:
        self._affinity.forget(event.run_id)
        return (NextUse(event.run_id, math.inf),)
