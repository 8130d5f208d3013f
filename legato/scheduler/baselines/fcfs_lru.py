"""`fcfs-lru`: what a stock vLLM v1 deployment does with agent traffic."""

from __future__ import annotations

from collections.abc import Sequence

from legato.scheduler.events import CallArrived
from legato.scheduler.policy import BasePolicy, ClusterView, Decision, Dispatch, PolicyTraits, least_loaded


class FcfsLru(BasePolicy):
    """Reproduces vLLM v1's default scheduler behind a least-loaded load balancer: every call is
    an independent request, served first-come first-served with chunked prefill; automatic
    prefix caching keeps freed blocks in an LRU free list; when blocks run out the newest running
    request is preempted and later recomputed. All of that lives in the simulated engine; the
    policy only routes each call to the replica with the fewest running + queued requests.

    Simplifies: no request-level session affinity (vLLM has none), equal priorities, and the
    load balancer sees exact queue lengths (a real one polls them)."""

    name = "fcfs-lru"
    traits = PolicyTraits(eviction="lru")

    def on_call(self, event: CallArrived, now: float, view: ClusterView) -> Sequence[Decision]:
        return (Dispatch(event.call.call_id, least_loaded(view)),)
