"""`autellix`: program-level least attained service (PLAS / ATLAS) and its load balancer.

Reproduces Autellix (Luo et al., "Autellix: An Efficient Serving Engine for LLM Agents as
General Programs", arXiv:2502.13965), section 4: priorities from the service a call's program
has attained, discretised into levels; ATLAS's critical-path service for multi-threaded
programs; promotion of calls whose wait is long relative to their program's service; preempted
calls swapped to CPU memory; a locality-aware load balancer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

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

# Level widths (service tokens) and the locality threshold are kept from this project's first
# reproduction: the paper defines K queues with exponentially growing ranges and a locality
# threshold for its load balancer but the text we could consult does not fix their values.
QUANTUM_TOKENS = 2048.0  # service of the first level; each next level doubles it
LOCALITY_TOKENS = 8192.0  # programs that attained more than this stay on their replica
# Anti-starvation (section 4): a call is promoted to the top level once its wait reaches
# STARVE_RATIO x its program's attained service time: 1 is the point where a program has waited
# as long as it has been served, where least-attained-service stops being fair to it.
STARVE_RATIO = 1.0
TICK_S = 1.0  # how often waits are checked (the engine step is far shorter; a check is cheap)


@dataclass(slots=True)
class _Run:
    home: int | None = None
    service: float = 0.0  # ATLAS: attained service on the program's critical path (tokens)
    paths: dict[str, float] = field(default_factory=dict)  # in-flight call -> its path service
    waiting: dict[str, float] = field(default_factory=dict)  # queued call -> when it arrived
    promoted: bool = False  # its waiting calls were promoted (until they finish)


class Autellix(BasePolicy):
    """Autellix's scheduler (arXiv:2502.13965, section 4):

    - PLAS / ATLAS: a call's priority is the service its program has attained. For a
      multi-threaded program (parallel calls) ATLAS counts the critical path: a call starts
      from max over the program's finished calls of (their starting service + their own
      service), so parallel siblings do not add up and a single-threaded program gets PLAS's
      plain sum. Service is what the engine computed: uncached prompt tokens plus output tokens
      (cached tokens cost the engine nothing). Priorities are discretised into levels whose
      widths double (a multi-level queue), so short programs overtake long ones without
      knowing their lengths.
    - Anti-starvation: a queued call whose wait reaches `STARVE_RATIO` x its program's service
      time (service tokens / the replica's measured throughput) is promoted to the top level.
    - Preemption swaps to CPU memory (`PolicyTraits.preemption="swap"`: the engine gets vLLM's
      default 4 GiB swap space as a host tier when no tiers are configured).
    - Load balancing: programs that attained little service go to the least-loaded replica,
      longer ones stay on their replica for KV locality.

    Simplifies: the level of a call is fixed when it is dispatched (Autellix also demotes a
    running call that exhausts its level's quantum and preempts it for higher-level work; here
    the engine applies levels when admitting and when choosing preemption victims, as vLLM's
    priority scheduler does); service is counted in tokens, the throughput conversion only for
    the starvation check."""

    name = "autellix"
    traits = PolicyTraits(eviction="lru", tick_s=TICK_S, preemption="swap")

    def __init__(self) -> None:
        self._runs: dict[str, _Run] = {}
        self._served: dict[int, float] = {}  # replica -> service tokens finished
        self._since: dict[int, float] = {}  # replica -> first dispatch

    @staticmethod
    def level(service: float) -> int:
        return 1 + max(0, math.floor(math.log2(1.0 + service / QUANTUM_TOKENS)))

    def on_call(self, event: CallArrived, now: float, view: ClusterView) -> Sequence[Decision]:
        call = event.call
        r = self._runs.setdefault(call.run_id, _Run())
        if r.home is None or r.service < LOCALITY_TOKENS:
            r.home = least_loaded(view)
        self._since.setdefault(r.home, now)
        r.paths[call.call_id] = r.service
        r.waiting[call.call_id] = now
        return (Dispatch(call.call_id, r.home, priority=self.level(r.service)),)

    def on_call_finished(self, event: CallFinished, now: float, view: ClusterView) -> Sequence[Decision]:
        r = self._runs.get(event.run_id)
        if r is None:
            return ()
        own = max(0, event.prompt_tokens - event.cached_tokens) + event.output_tokens
        start = r.paths.pop(event.call_id, r.service)
        r.service = max(r.service, start + own)  # ATLAS: the longest path so far
        r.waiting.pop(event.call_id, None)
        if not r.waiting:
            r.promoted = False
        if r.home is not None:
            self._served[r.home] = self._served.get(r.home, 0.0) + own
        return ()

    def _rate(self, replica: int | None, now: float) -> float:
        """Service tokens per second the replica has delivered so far (0: unknown yet)."""
        if replica is None:
            return 0.0
        elapsed = now - self._since.get(replica, now)
        return self._served.get(replica, 0.0) / elapsed if elapsed > 0 else 0.0

    def on_tick(self, now: float, view: ClusterView) -> Sequence[Decision]:
        out: list[Decision] = []
        rates: dict[int | None, float] = {}
        for run_id, r in self._runs.items():
            if not r.waiting or r.promoted or r.service <= 0:
                continue
            rate = rates.get(r.home)
            if rate is None:
                rate = rates[r.home] = self._rate(r.home, now)
            if rate <= 0:
                continue
            oldest = min(r.waiting.values())
            if (now - oldest) * rate >= STARVE_RATIO * r.service:  # wait >= ratio x service time
                r.promoted = True
                out.append(SetPriority(run_id, 0))
        return out

    def on_run_finished(self, event: RunFinished, now: float, view: ClusterView) -> Sequence[Decision]:
        self._runs.pop(event.run_id, None)
        return ()
