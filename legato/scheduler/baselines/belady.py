"""`belady`: the clairvoyant eviction bound."""

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


class Belady(BasePolicy):
    """Bound: FCFS scheduling with Bélády's eviction: among evictable cached blocks, evict those
    whose next use is furthest in the future, using the *exact* future (the simulator's oracle
    knows when each tool step ends and whether the program calls the LLM again). Programs stay on
    their first replica. No other policy may see the future; this one exists so reports can say
    how far a policy is from clairvoyant caching (SAGA reports 1.31x).

    Simplifies: next use is per program (a program's whole KV gets its next call's time); shared
    prefixes (system prompts used by several programs) are evicted last, in LRU order; admission
    and preemption stay vLLM's, so it bounds eviction only, not scheduling."""

    name = "belady"
    traits = PolicyTraits(eviction="next-use", oracle=True)

    def __init__(self) -> None:
        self._affinity = Affinity()
        self._oracle: FutureOracle | None = None

    def set_oracle(self, oracle: FutureOracle) -> None:
        self._oracle = oracle

    def _hint(self, run_id: str, now: float) -> Sequence[Decision]:
        if self._oracle is None:
            return ()
        return (NextUse(run_id, self._oracle.next_use_s(run_id, now)),)

    def on_call(self, event: CallArrived, now: float, view: ClusterView) -> Sequence[Decision]:
        call = event.call
        return (Dispatch(call.call_id, self._affinity.route(call.run_id, view)),)

    def on_call_finished(self, event: CallFinished, now: float, view: ClusterView) -> Sequence[Decision]:
        return self._hint(event.run_id, now)

    def on_tool_started(self, event: ToolStarted, now: float, view: ClusterView) -> Sequence[Decision]:
        return self._hint(event.run_id, now)

    def on_run_finished(self, event: RunFinished, now: float, view: ClusterView) -> Sequence[Decision]:
        self._affinity.forget(event.run_id)
        return (NextUse(event.run_id, math.inf),)
