"""`lpm`: SGLang's longest-prefix-match scheduling with its cache-aware router."""

from __future__ import annotations

from collections.abc import Sequence

from legato.scheduler.events import CallArrived
from legato.scheduler.policy import BasePolicy, ClusterView, Decision, Dispatch, PolicyTraits

CACHE_THRESHOLD = 0.5  # sgl-router's default: route by cache when the best match covers > 50%
LPM_FALLBACK_QUEUE = 128  # schedule_policy.py: LPM turns into FCFS above this many queued requests


class Lpm(BasePolicy):
    """Reproduces SGLang with its defaults:

    - Router (sgl-router, cache-aware policy): a request goes to the replica whose radix cache
      holds the longest prefix of it when that covers more than `cache_threshold` = 0.5 of the
      prompt, otherwise to the replica with the shortest queue.
    - Queue order (`python/sglang/srt/managers/schedule_policy.py`, `SchedulePolicy`): longest
      prefix match first, falling back to FCFS when more than 128 requests wait.
    - Admission (`PrefillAdder`): conservative, keeping room for the output still to come of
      every running request, scaled by `new_token_ratio` (`PolicyTraits.reserve_output`; see
      `legato.sim.output_reserve`).
    - Out of memory (`ScheduleBatch.retract_decode`): the running request with the fewest output
      tokens (ties: the longest prompt) is retracted and later recomputed
      (`PolicyTraits.victim="fewest-output"`), whatever its prefix match.
    - The radix cache evicts least recently used leaves.

    Simplifies: the match length is taken once, at dispatch (SGLang recomputes it every
    scheduling round); the router sees the replicas' true caches (sgl-router keeps an
    approximate tree of what it routed); a retracted request's cached blocks stay reusable
    (SGLang frees them outright)."""

    name = "lpm"
    traits = PolicyTraits(eviction="lru", victim="fewest-output", reserve_output=True)

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
        if view.replica(replica).waiting > LPM_FALLBACK_QUEUE:
            match = 0  # FCFS: equal priorities run in arrival order
        return (Dispatch(call.call_id, replica, priority=-match),)
