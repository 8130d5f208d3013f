"""`lpm`: SGLang's longest-prefix-match scheduling with its cache-aware router."""

from __future__ import annotations

from collections.abc import Sequence

from legato.scheduler.events import CallArrived
from legato.scheduler.policy import BasePolicy, ClusterView, Decision, Dispatch, PolicyTraits

CACHE_THRESHOLD = 0.5  # sgl-router's default: route by cache when the best match covers > 50%


class Lpm(BasePolicy):
    """Reproduces SGLang: the router sends a request to the replica whose radix cache holds the
    longest prefix of it when that covers more than half the prompt, otherwise to the replica
    with the shortest queue; each replica orders its queue longest-prefix-match first; the radix
    cache evicts least recently used leaves; out-of-memory is handled by recompute.

    Simplifies: the match length is taken once, at dispatch, and frozen into the request's
    priority (SGLang recomputes it every scheduling round, and falls back to FCFS when the queue
    exceeds 128 requests); the router sees the replicas' true caches (sgl-router keeps an
    approximate tree of what it routed)."""

    name = "lpm"
    traits = PolicyTraits(eviction="lru")

    def on_call(self, event: CallArrived, now: float, view: ClusterView) -> Sequence[Decision]:
        call = event.call
        best, best_match = 0, -1
        shortest, shortest_load = 0, -1
        for i in range(view.num_replicas):
            match = view.cached_prefix_tokens(i, call.call_id)
            if match > best_match:
                best, best_match = i, match
            r = view.replica(i)
            load = r.running + r.waiting
            if shortest_load < 0 or load < shortest_load:
                shortest, shortest_load = i, load
        if best_match > CACHE_THRESHOLD * max(1, call.prompt_len):
            replica, match = best, best_match
        else:
            replica, match = shortest, view.cached_prefix_tokens(shortest, call.call_id)
        return (Dispatch(call.call_id, replica, priority=-match),)
