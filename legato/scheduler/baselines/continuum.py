"""`continuum`: pin an agent's KV through its tool call for a cost-benefit time-to-live.

Reproduces Continuum (Li et al., "Continuum: Efficient and Robust Multi-Turn LLM Agent
Scheduling with KV Cache Time-to-Live", arXiv:2511.02230): program-level FCFS, a KV pin at
each tool call whose TTL maximises the expected benefit of the pin minus its memory cost over
the tool's latency distribution (the paper's tau* rule, section 4), and pins that give way,
latest program first, when memory runs out.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from legato.scheduler.baselines.sticky import Affinity
from legato.scheduler.events import (
    CallArrived,
    CallFinished,
    RunFinished,
    RunStarted,
    ToolFinished,
    ToolStarted,
)
from legato.scheduler.policy import BasePolicy, ClusterView, Decision, Dispatch, Pin, PolicyTraits

# Cold start (no latency of the tool observed yet, or no throughput measured): the TTL of the
# released code (github.com/Hanchenli/vllm-continuum, `FIXED_THRESHOLD_CONTINUUM = 2.0`).
COLD_TTL_S = 2.0
# The empirical CDF is over the tool's most recent latencies (a sliding history, so it follows
# drift and a decision costs O(window)); the paper's "historical CDF" does not fix a length.
WINDOW = 512


@dataclass(slots=True)
class _ToolHistory:
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    sorted: list[float] = field(default_factory=list)

    def add(self, latency_s: float) -> None:
        if len(self.recent) == WINDOW:
            old = self.recent[0]
            del self.sorted[bisect.bisect_left(self.sorted, old)]
        self.recent.append(latency_s)
        bisect.insort(self.sorted, latency_s)


def best_ttl(latencies: Sequence[float], benefit_s: float, cost_per_s: float) -> float:
    """tau* = argmax_tau F(tau) x benefit - cost_per_s x E[min(T, tau)], F the empirical CDF of
    the tool's latency T (`latencies`, ascending). The maximum is at a sample (F jumps there,
    the cost grows continuously), so only samples are tried; 0 when no TTL has positive value
    (the pin is not worth its memory)."""
    k = len(latencies)
    best, best_u = 0.0, 0.0
    below = 0.0  # sum of samples <= tau
    for i, x in enumerate(latencies, start=1):
        below += x
        u = benefit_s * i / k - cost_per_s * (below + (k - i) * x) / k
        if u > best_u:
            best, best_u = x, u
    return best


class Continuum(BasePolicy):
    """Continuum (arXiv:2511.02230):

    - Program-level FCFS: a call's priority is its program's arrival order; a program stays on
      one replica.
    - When a call ends in a tool call, its KV (prompt + output) is pinned with TTL tau* (section
      4, "TTL"): the value of a pin that the tool outlives is nothing; the value of one it does
      not outlive is the reload it saves, and holding it costs its share of memory for as long
      as it is held. With n the pinned tokens, C the replica's KV capacity and R its measured
      prefill throughput (tokens/s), benefit = n / R (the engine time a recompute takes) and
      cost = (n / C) per second held (the share of the engine's memory, hence of its batch,
      the pin withholds), so tau* = argmax F(tau) n / R - (n / C) E[min(T, tau)] over the
      tool's empirical latency CDF F (`best_ttl`); tau* = 0 means no pin.
    - Pins are yielded when memory runs out (section 4, "unpinning"): the engine unpins the
      latest-arrived program's pin first (`PolicyTraits.pin_yield`), which is what keeps a TTL
      robust when a tool runs long.

    Simplifies: the benefit counts the reload only, not the queueing delay after eviction
    (the paper adds it; under program-level FCFS the returning program is served ahead of
    later ones, so that delay is mostly the reload itself); cold start (no history for the
    tool, or no throughput measured yet) pins for the released code's fixed 2 s rather than
    the paper's exponential prior; R is measured online as prompt tokens computed per second
    on the replica (its achieved prefill rate under the current mix)."""

    name = "continuum"
    traits = PolicyTraits(eviction="lru", pin_yield=True)

    def __init__(self) -> None:
        self._affinity = Affinity()
        self._order: dict[str, int] = {}
        self._seen = 0
        self._hist: dict[str, _ToolHistory] = {}
        self._context: dict[str, int] = {}  # run -> tokens its last call leaves in KV
        self._computed: dict[int, float] = {}  # replica -> prompt tokens computed
        self._since: dict[int, float] = {}  # replica -> when it got its first call

    def on_run_started(self, event: RunStarted, now: float, view: ClusterView) -> Sequence[Decision]:
        self._seen += 1
        self._order[event.run_id] = self._seen
        return ()

    def on_call(self, event: CallArrived, now: float, view: ClusterView) -> Sequence[Decision]:
        call = event.call
        replica = self._affinity.route(call.run_id, view)
        self._since.setdefault(replica, now)
        return (Dispatch(call.call_id, replica, priority=self._order.get(call.run_id, 0)),)

    def on_call_finished(self, event: CallFinished, now: float, view: ClusterView) -> Sequence[Decision]:
        self._context[event.run_id] = event.prompt_tokens + event.output_tokens
        replica = self._affinity.get(event.run_id)
        if replica is not None:
            computed = self._computed.get(replica, 0.0) + event.prompt_tokens - event.cached_tokens
            self._computed[replica] = computed
        return ()

    def ttl(self, tool: str, run_id: str, now: float, view: ClusterView) -> float:
        """tau* for the run's pin at the start of `tool` (see the class docstring)."""
        hist = self._hist.get(tool)
        replica = self._affinity.get(run_id)
        if hist is None or replica is None:
            return COLD_TTL_S
        elapsed = now - self._since.get(replica, now)
        computed = self._computed.get(replica, 0.0)
        if elapsed <= 0 or computed <= 0:
            return COLD_TTL_S
        rate = computed / elapsed  # prompt tokens per second
        r = view.replica(replica)
        capacity = r.total_blocks * r.block_size
        n = self._context.get(run_id, 0)
        return best_ttl(hist.sorted, n / rate, n / capacity)

    def on_tool_started(self, event: ToolStarted, now: float, view: ClusterView) -> Sequence[Decision]:
        ttl = self.ttl(event.tool, event.run_id, now, view)
        return (Pin(event.run_id, ttl),) if ttl > 0 else ()

    def on_tool_finished(self, event: ToolFinished, now: float, view: ClusterView) -> Sequence[Decision]:
        self._hist.setdefault(event.tool, _ToolHistory()).add(event.duration_s)
        return ()

    def on_run_finished(self, event: RunFinished, now: float, view: ClusterView) -> Sequence[Decision]:
        self._affinity.forget(event.run_id)
        self._order.pop(event.run_id, None)
        self._context.pop(event.run_id, None)
        return ()
