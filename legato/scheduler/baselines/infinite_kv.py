"""`infinite-kv`: the no-eviction bound."""

from __future__ import annotations

from collections.abc import Sequence

from legato.scheduler.baselines.sticky import Affinity
from legato.scheduler.events import CallArrived, RunFinished
from legato.scheduler.policy import BasePolicy, ClusterView, Decision, Dispatch, PolicyTraits


class InfiniteKV(BasePolicy):
    """Bound: the same engine with an unlimited KV pool, so nothing is ever evicted or
    preempted and every prefix computed once is reused by every later call on that replica. Calls
    are FCFS; a program stays on the replica of its first call (with unlimited KV that is always
    the right choice), so its hit rate bounds every policy's on the same workload.

    Simplifies: still limited by `max_num_seqs` and the token budget (those are compute limits,
    not memory), and concurrent first computations of one prefix are not deduplicated."""

    name = "infinite-kv"
    traits = PolicyTraits(unlimited_kv=True)

    def __init__(self) -> None:
        self._affinity = Affinity()

    def on_call(self, event: CallArrived, now: float, view: ClusterView) -> Sequence[Decision]:
        call = event.call
        return (Dispatch(call.call_id, self._affinity.route(call.run_id, view)),)

    def on_run_finished(self, event: RunFinished, now: float, view: ClusterView) -> Sequence[Decision]:
        self._affinity.forget(event.run_id)
        return ()
