"""`continuum`: pin an agent's KV through its tool call for a cost-benefit time-to-live.

Reproduces Continuum (Li et al., "Continuum: Efficient and Robust Multi-Turn LLM Agent
Scheduling with KV Cache Time-to-Live", arXiv:2511.02230): program-level FCFS, a KV pin at
each tool call whose TTL maximises the paper's Equation (2) over the tool's latency
distribution (sections 3-4, Algorithm 1), with its cold-start rules (v6, section 4.2), and
pins that give way, latest program first, when memory runs out. The paper's estimator code is
unpublished (the released code pins for a fixed 2 s, "without the estimation in the paper");
the equation and rules follow the paper as reconstructed in
github.com/burninglhw/vllm-continuum (`docs/continuum-paper.md`).
"""

from __future__ import annotations

import bisect
import math
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

# Cold start (v6, section 4.2): with at most K observed tool returns in all, the tool latency
# is taken as exponential with a 1 s mean; with at most K of this tool, all tools' latencies
# are pooled; beyond, the tool's own empirical CDF.
COLD_START_K = 100
PRIOR_MEAN_S = 1.0
# The empirical CDFs are over the most recent latencies (a sliding history, so a decision costs
# O(window)); the paper does not fix a length.
WINDOW = 512
# The queueing term's windows: the reconstruction's defaults (256 evicted waits, 256 programs).
QUEUE_WINDOW = 256
PROGRAM_WINDOW = 256


class _Eta:
    """eta = -Pearson correlation of (k, N - k) over the non-final steps k of the last completed
    programs (N steps each): how strongly a program that has run longer has less left."""

    def __init__(self) -> None:
        self._progs: deque[int] = deque()
        self._sums = [0.0] * 6  # n, sum x, sum y, sum xx, sum yy, sum xy

    @staticmethod
    def _terms(n_steps: int) -> list[float]:
        m = n_steps - 1  # pairs (k, N - k), k = 1 .. N - 1
        sx = m * (m + 1) / 2
        sxx = m * (m + 1) * (2 * m + 1) / 6
        sy = m * n_steps - sx
        syy = n_steps * n_steps * m - 2 * n_steps * sx + sxx
        sxy = n_steps * sx - sxx
        return [float(m), sx, sy, sxx, syy, sxy]

    def add(self, n_steps: int) -> None:
        if n_steps < 2:
            return
        if len(self._progs) == PROGRAM_WINDOW:
            old = self._progs.popleft()
            self._sums = [a - b for a, b in zip(self._sums, self._terms(old), strict=True)]
        self._progs.append(n_steps)
        self._sums = [a + b for a, b in zip(self._sums, self._terms(n_steps), strict=True)]

    def value(self) -> float:
        n, sx, sy, sxx, syy, sxy = self._sums
        if n < 2:
            return 0.0
        vx, vy = n * sxx - sx * sx, n * syy - sy * sy
        if vx <= 0 or vy <= 0:
            return 0.0
        return -(n * sxy - sx * sy) / math.sqrt(vx * vy)


@dataclass(slots=True)
class _History:
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    sorted: list[float] = field(default_factory=list)
    seen: int = 0

    def add(self, latency_s: float) -> None:
        if len(self.recent) == WINDOW:
            del self.sorted[bisect.bisect_left(self.sorted, self.recent[0])]
        self.recent.append(latency_s)
        bisect.insort(self.sorted, latency_s)
        self.seen += 1


def best_ttl(latencies: Sequence[float], benefit_s: float) -> float:
    """Equation (2): tau* = argmax over tau in {0} + samples of F(tau) x benefit - tau, F the
    empirical CDF of the tool's latency (`latencies`, ascending). Ties go to the shorter TTL;
    0 means no pin."""
    k = len(latencies)
    best, best_u = 0.0, 0.0
    for i, x in enumerate(latencies, start=1):
        if i < k and latencies[i] == x:
            continue  # F jumps past every copy of x
        u = benefit_s * i / k - x
        if u > best_u:
            best, best_u = x, u
    return best


def prior_ttl(benefit_s: float) -> float:
    """Equation (2) under the exponential prior (mean mu): tau* = mu log(B / mu) when B > mu."""
    return PRIOR_MEAN_S * math.log(benefit_s / PRIOR_MEAN_S) if benefit_s > PRIOR_MEAN_S else 0.0


class Continuum(BasePolicy):
    """Continuum (arXiv:2511.02230):

    - Program-level FCFS: a call's priority is its program's arrival order, except that a call
      returning to a live pin goes first; a program stays on one replica. (Preempted requests
      go back to the head of the queue in the engine.)
    - When a call ends in a tool call, its KV (prompt + output) is pinned for tau* =
      argmax F(tau) x B - tau (Equation 2), B = what a pin saves when the tool returns within
      it: the reload (prefill time of the context) plus eta x T, T the mean queueing wait of
      evicted programs' next calls (programs that returned to no live pin; the engine reports
      each call's queued -> admitted time) and eta = -corr(k, N - k) over completed programs'
      steps (1 at cold start). F is the tool's empirical latency CDF, the pooled CDF of all
      tools while this one has at most 100 samples, and an exponential of mean 1 s while at
      most 100 tool returns were seen at all (cold start, section 4.2).
    - When memory runs out, whole pins are released, latest program first, before queued calls
      are refused and before running ones are preempted (`PolicyTraits.pin_yield`).

    Simplifies: the prefill time comes from the replica's measured prefill throughput (prompt
    tokens computed per second since its first call) instead of an offline profile, which
    overstates it (the engine also decodes), so TTLs are if anything longer; a preempted
    call's wait from preemption to readmission is not counted in T (the policy does not see
    preemptions)."""

    name = "continuum"
    traits = PolicyTraits(eviction="lru", pin_yield=True)

    def __init__(self) -> None:
        self._affinity = Affinity()
        self._order: dict[str, int] = {}
        self._seen = 0
        self._hist: dict[str, _History] = {}
        self._all = _History()
        self._context: dict[str, int] = {}  # run -> tokens its last call leaves in KV
        self._pinned_until: dict[str, float] = {}
        self._returning: set[str] = set()  # calls that arrived to a live pin
        self._steps: dict[str, int] = {}  # run -> calls finished
        self._waits: deque[float] = deque(maxlen=QUEUE_WINDOW)  # evicted programs' queueing
        self._eta = _Eta()
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
        pinned = self._pinned_until.pop(call.run_id, -1.0) >= now
        if pinned:
            self._returning.add(call.call_id)
        priority = 0 if pinned else self._order.get(call.run_id, 0)
        return (Dispatch(call.call_id, replica, priority=priority),)

    def on_call_finished(self, event: CallFinished, now: float, view: ClusterView) -> Sequence[Decision]:
        self._context[event.run_id] = event.prompt_tokens + event.output_tokens
        steps = self._steps.get(event.run_id, 0)
        self._steps[event.run_id] = steps + 1
        returning = event.call_id in self._returning
        self._returning.discard(event.call_id)
        if steps and not returning and event.queued_s is not None:
            self._waits.append(event.queued_s)  # an evicted program's next call: what it waited
        replica = self._affinity.get(event.run_id)
        if replica is not None:
            computed = self._computed.get(replica, 0.0) + event.prompt_tokens - event.cached_tokens
            self._computed[replica] = computed
        return ()

    def reload_s(self, run_id: str, now: float) -> float | None:
        """Seconds to recompute the run's context on its replica (None: no rate measured yet)."""
        replica = self._affinity.get(run_id)
        if replica is None:
            return None
        elapsed = now - self._since.get(replica, now)
        computed = self._computed.get(replica, 0.0)
        if elapsed <= 0 or computed <= 0:
            return None
        return self._context.get(run_id, 0) / (computed / elapsed)

    def ttl(self, tool: str, run_id: str, now: float) -> float:
        """tau* for the run's pin at the start of `tool` (see the class docstring)."""
        reload = self.reload_s(run_id, now)
        if reload is None:
            return 0.0
        wait = sum(self._waits) / len(self._waits) if self._waits else 0.0
        if self._all.seen <= COLD_START_K:
            return prior_ttl(reload + wait)  # eta = 1 at cold start
        benefit = reload + self._eta.value() * wait
        hist = self._hist.get(tool)
        if hist is None or hist.seen <= COLD_START_K:
            hist = self._all
        return best_ttl(hist.sorted, benefit)

    def on_tool_started(self, event: ToolStarted, now: float, view: ClusterView) -> Sequence[Decision]:
        ttl = self.ttl(event.tool, event.run_id, now)
        if ttl <= 0:
            return ()
        self._pinned_until[event.run_id] = now + ttl
        return (Pin(event.run_id, ttl),)

    def on_tool_finished(self, event: ToolFinished, now: float, view: ClusterView) -> Sequence[Decision]:
        self._hist.setdefault(event.tool, _History()).add(event.duration_s)
        self._all.add(event.duration_s)
        return ()

    def on_run_finished(self, event: RunFinished, now: float, view: ClusterView) -> Sequence[Decision]:
        self._affinity.forget(event.run_id)
        self._order.pop(event.run_id, None)
        self._context.pop(event.run_id, None)
        self._pinned_until.pop(event.run_id, None)
        self._eta.add(self._steps.pop(event.run_id, 0))
        return ()
