"""`legato`: Legato's own program-level policy.

What it does with its knowledge of whole programs (DESIGN.md, "Scheduler"):

- **Admission** (`KVBudget`): a program's calls reach an engine only while the summed KV
  of the replica's active programs — projected a few calls ahead from what past runs of the
  program did (growth per call, fan-outs, chance of finishing first), with a safety margin of
  its standard deviation — fits under its capacity; programs whose KV would not fit wait in the
  policy, holding nothing. When a running program's context grows past the
  high threshold, whole programs are paused — the most recently admitted first, preferring ones
  with no call on the engine (pausing those costs no work in flight) — so the engine never
  thrashes. A paused program re-enters its tenant's queue one call ahead of a new program
  with the same predicted remaining work (part of its KV is usually still resident: eviction
  is tail-first and only takes what is needed); its ageing restarts at the pause, so a long
  program can wait behind shorter new ones (strict resume-first was measured to cost swe
  throughput). Below `MIN_PROGRAMS`
  programs on a replica none of this applies: there the budget only ever held the engine to
  one or two programs at a time (a pool of a few contexts), and the decode batch it lost cost
  more than the recomputation it saved (1.05-1.72x FCFS's makespan on 12-64 programs with a
  pool of two of the largest calls); the engine's own preemption handles overflow instead.
- **Order**: tenants by weighted virtual token counters (`FairShare`, a program's predicted
  cost charged when it is admitted and settled as its calls run); within a tenant, least
  predicted remaining work first (mean residual calls learned from past runs of the program:
  programs that are further along finish first instead of interleaving), aged so nothing
  starves; the engine runs admitted programs' calls in admission order, so a preemption, if
  one ever happens, hits the newest program. Admission is program-granular, so between
  admissions one tenant's programs can run ahead of its weight (a few programs' worth: the
  share drifted 1.79-2.06 for weights 2:1); a call-level gate holds an admitted program's
  next call while its tenant leads a backlogged tenant with calls on the engines by more than
  `gate_tokens` of delivered service per weight (work-conserving, at most `GATE_MAX_WAIT_S`).
- **Cache**: a `NextUse` of never for KV no call will read again (evicted before anything
  else; the rest is evicted least recently used first, see `_forget`), a
  `Pin` through a tool call when recomputing the context would cost more GPU time than holding
  it for the tool's predicted duration at the current memory pressure (TTL: a high quantile of
  the tool's latency), `Prefetch` when a tool is about to finish. A branch expected to run a
  tool counts in the budget from its call's end; if the tool has not started `TOOL_GRACE_S`
  later, the expectation was wrong and the branch stops counting.
- **Routing** (`Router`): program affinity, RL-group affinity, work stealing for idle replicas.

Every per-event step is O(live calls of the program + tenants + log programs): no scan over
programs, so the decision cost stays flat at 10,000 active programs.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field

from legato.scheduler.admission import KVBudget
from legato.scheduler.engine_rates import EngineRates
from legato.scheduler.events import (
    CallArrived,
    CallFinished,
    CallHints,
    RunFinished,
    RunStarted,
    ToolFinished,
    ToolStarted,
)
from legato.scheduler.fair_share import FairShare
from legato.scheduler.pin_rule import hold_ttl, memory_price
from legato.scheduler.policy import (
    BasePolicy,
    ClusterView,
    Decision,
    Dispatch,
    NextUse,
    Pause,
    Pin,
    PolicyTraits,
    Prefetch,
    Resume,
    Unpin,
)
from legato.scheduler.predictor import ReusePredictor
from legato.scheduler.routing import Router

TICK_S = 0.5
AGING_CALLS_PER_S = 1.0 / 30.0  # a waiting program gains one call of priority per 30 s waited
DEFAULT_CALLS = 10.0  # predicted calls of a program never seen to finish
HORIZONS = (0, 1)  # calls ahead at which admission checks the projected KV total
VICTIM_LOOKAHEAD = 8  # newest active programs examined for one without work on the engine
GATE_TOKENS = 8_000.0  # lead in service per weight over a tenant on the engines: calls wait
GATE_MAX_WAIT_S = 10.0  # ... but never longer than this (no cycle of waits can stall a run)
TOOL_GRACE_S = 2 * TICK_S  # a branch whose expected tool has not started by then has none

NEW, WAITING, ACTIVE, PAUSED = range(4)


@dataclass(slots=True)
class _Branch:
    """A finished call whose context waits for a tool before the next call reads it."""

    tool: str
    ctx: float
    started: bool = False
    held: bool = True  # counted in the KV budget (False: released through its tool, see pin_rule)
    # Until its tool starts, the branch is only expected (from a hint or from what followed
    # this call site in past runs, which can be wrong: a map body's last round has no tool);
    # past this time without a `ToolStarted` it is dropped (see `_drop_unstarted`).
    expires_s: float = math.inf


@dataclass(slots=True)
class _Run:
    run_id: str
    program: str
    tenant: str
    group: str | None
    state: int = NEW
    replica: int | None = None  # where its KV lives (kept while paused)
    prio: int = 0  # engine priority: admission order
    held: list[str] = field(default_factory=list)  # arrived calls not yet dispatched
    live: dict[str, int] = field(default_factory=dict)  # arrived, unfinished call -> prompt tokens
    dispatched: int = 0  # calls on an engine, unfinished
    # (tool, context, started) per branch whose KV waits for a tool: entered when the call
    # finishes with a tool expected, so the footprint never dips between call and tool.
    acting: list[_Branch] = field(default_factory=list)
    bridge: float = 0.0  # context a finished call hands to dependents that have not arrived yet
    last_ctx: float = 0.0
    last_node: str = ""
    root_ctx: float | None = None  # context after the first call (what parallel branches share)
    shared: list[tuple[Hashable, float]] = field(default_factory=list)
    shared_tokens: float = 0.0
    calls_done: int = 0
    queued_s: float = 0.0
    qver: int = 0  # waiting-queue entry version (lazy deletion)
    queued: bool = False
    engine_paused: bool = False  # a Pause decision is in force (its calls are parked)
    prev_prompt: int = 0  # prompt of the previous sequential call (growth samples)
    last_call_final: bool = False  # the latest call is the run's last step
    peak: float = 0.0  # largest footprint since the last call finished (history)
    prepaid: float = 0.0  # fair-share cost charged at admission, not yet used by calls
    live_paid: float = 0.0  # cost already charged for live calls (their prompts)
    costs: list[float] = field(default_factory=list)  # fair-share cost of each finished call
    tool_ver: int = 0
    hints: dict[str, tuple[str, CallHints]] = field(default_factory=dict)  # call -> (node, hints)
    deferred: list[str] = field(default_factory=list)  # admitted calls the fair-share gate holds


def branch_of(r: _Run, tool: str) -> _Branch | None:
    """The started branch of the run waiting for `tool` (the latest one)."""
    for b in reversed(r.acting):
        if b.tool == tool and b.started:
            return b
    return None


class Legato(BasePolicy):
    name = "legato"
    traits = PolicyTraits(eviction="next-use", tick_s=TICK_S)

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        *,
        low: float = 1.0,
        high: float = 1.0,
        gate_tokens: float = GATE_TOKENS,
    ) -> None:
        self.fair = FairShare(weights)
        self.budget = KVBudget(horizons=len(HORIZONS), low=low, high=high, safety=0.0)
        self.router = Router()
        self.predictor = ReusePredictor()
        self.rates = EngineRates()
        self._holds: list[tuple[float, int, str, _Branch]] = []  # (TTL end, seq, run, branch)
        self.gate_tokens = gate_tokens
        self._on_engine: dict[str, int] = {}  # tenant -> its calls on an engine
        self._deferred: dict[str, list[str]] = {}  # tenant -> runs with deferred calls (FIFO)
        self._deferred_since: dict[str, float] = {}  # tenant -> when its oldest call was held
        self._runs: dict[str, _Run] = {}
        self._waiting: dict[str, list[tuple[float, int, int, str]]] = {}  # tenant -> heap
        self._victims: list[list[tuple[int, str]]] = []  # per replica: (-prio, run)
        self._prefetch: list[tuple[float, int, int, str]] = []  # (tool end, seq, tool_ver, run)
        self._expected: list[tuple[float, int, str]] = []  # (branch expiry, seq, run): see _Branch
        self._seq = 0
        self._admitted = 0
        self._blocked: tuple[str, int, int] | None = None  # (head run, its qver, releases)
        self.pins = 0
        self.pauses = 0

    # --- bookkeeping ---------------------------------------------------------------------

    def _ensure_capacity(self, view: ClusterView) -> None:
        if self.budget.replicas == view.num_replicas:
            return
        caps = []
        for i in range(view.num_replicas):
            r = view.replica(i)
            caps.append(float(r.total_blocks * r.block_size))
        self.budget.set_capacity(caps)
        self._victims = [[] for _ in caps]

    def _footprint(self, r: _Run) -> float:
        """Private KV tokens the run needs resident now (shared parts excluded)."""
        reserve = self.predictor.history.mean_output(r.program)
        branches = [p + reserve for p in r.live.values()]
        branches.extend(b.ctx for b in r.acting if b.held)
        if r.bridge and not r.live:
            branches.append(r.bridge)
        if not branches:
            return 0.0
        total = sum(branches)
        if len(branches) > 1:
            head = min(r.root_ctx or 0.0, min(branches))
            total -= (len(branches) - 1) * head
        return max(0.0, total - r.shared_tokens)

    def _projected(self, r: _Run, footprint: float) -> tuple[list[float], list[float]]:
        """Expected footprint `h` calls ahead, for each horizon h, and its variance: the run
        holds footprint + h x (mean growth per call) with probability s (it still runs then,
        from the length distribution of past runs of the program), nothing otherwise."""
        n = len(HORIZONS)
        if r.last_call_final:
            return [footprint] + [0.0] * (n - 1), [0.0] * n
        hist = self.predictor.history
        growth = hist.mean_growth(r.program)
        done = r.calls_done
        mean: list[float] = []
        var: list[float] = []
        for h in HORIZONS:
            learned = hist.footprint_growth(r.program, done, h) if h else 0.0
            size = footprint + (h * growth if learned is None else max(0.0, learned))
            s = hist.survival(r.program, done, h)
            mean.append(s * size)
            var.append(s * (1.0 - s) * size * size)
        return mean, var

    def _sync(self, r: _Run) -> None:
        fp = self._footprint(r)
        r.peak = max(r.peak, fp)
        self.budget.update(r.run_id, fp, *self._projected(r, fp))

    def _need_fn(self, r: _Run) -> Callable[[int], tuple[list[float], list[float]]]:
        """The run's projected need on each replica (its projection is computed once; only
        the shared parts it would add differ between replicas)."""
        mean, var = self._projected(r, self._footprint(r))

        def need(replica: int) -> tuple[list[float], list[float]]:
            shared = self.budget.shared_cost(replica, r.shared)
            return ([p + shared for p in mean] if shared else mean), var

        return need

    def _enqueue(self, r: _Run, now: float) -> None:
        """Put the run in its tenant's waiting queue (least predicted remaining work, aged)."""
        if r.state not in (WAITING, PAUSED):
            raise AssertionError(f"enqueue of run {r.run_id} in state {r.state}")
        remaining = self.predictor.history.expected_remaining_calls(r.program, r.calls_done)
        if remaining is None:
            remaining = DEFAULT_CALLS
        r.queued_s = now
        r.queued = True
        r.qver += 1
        self._seq += 1
        key = remaining + AGING_CALLS_PER_S * now - (1.0 if r.state == PAUSED else 0.0)
        heapq.heappush(self._waiting.setdefault(r.tenant, []), (key, self._seq, r.qver, r.run_id))

    def _head(self, tenant: str) -> _Run | None:
        heap = self._waiting.get(tenant)
        while heap:
            _, _, qver, run_id = heap[0]
            r = self._runs.get(run_id)
            if r is not None and r.qver == qver and r.queued:
                return r
            heapq.heappop(heap)
        if heap is not None:
            del self._waiting[tenant]
        return None

    # --- admission -----------------------------------------------------------------------

    def _admit(self, now: float, view: ClusterView, out: list[Decision]) -> None:
        """Admit waiting programs, fair-share order, while they fit somewhere."""
        while self._waiting:
            heads = {t: h for t in list(self._waiting) if (h := self._head(t)) is not None}
            if not heads:
                return
            r = heads[self.fair.pick(sorted(heads))]
            if self._blocked == (r.run_id, r.qver, self.budget.releases):
                return  # the same program failed to fit and nobody has left since: skip the math
            replica = self.router.choose(
                self.budget,
                self._need_fn(r),
                home=r.replica,
                group=r.group,
                waited_s=now - r.queued_s,
                idle=lambda i: self._idle(view, i),
                may_steal=r.dispatched == 0,  # calls parked on its home replica pin it there
            )
            if replica is None:
                if self._unhold_idle(r, view, now, out):
                    continue
                self._blocked = (r.run_id, r.qver, self.budget.releases)
                return
            heapq.heappop(self._waiting[r.tenant])
            self._activate(r, replica, now, out)

    def _unhold_idle(self, r: _Run, view: ClusterView, now: float, out: list[Decision]) -> bool:
        """A replica with nothing to run while `r` waits for memory: the KV it holds for
        programs inside tools is worth nothing to an idle engine (a hold is priced by the work
        it keeps out, see `pin_rule`), so those programs are released, newest first, until `r`
        fits. Returns whether anything was released (then admission retries)."""
        released = False
        for replica in range(self.budget.replicas):
            if not self._idle(view, replica):
                continue
            for _, run_id in sorted(self._victims[replica]):
                v = self._runs.get(run_id)
                if v is None or v.state != ACTIVE or v.replica != replica or v.live or v.dispatched:
                    continue
                if not any(b.held for b in v.acting):
                    continue
                for b in v.acting:
                    b.held = False
                out.append(Unpin(v.run_id))
                self._pause(v, now, out)
                released = True
                if self.budget.fits(replica, *self._need_fn(r)(replica)):
                    return True
        return released

    def _predicted_cost(self, r: _Run) -> float:
        """Fair-share cost the run is expected to consume from here: what past runs of the
        program still cost after as many calls (less what its live calls already paid);
        without such runs, its expected remaining calls x the program's mean cost per call
        (one call's cost without any history)."""
        hist = self.predictor.history
        rest = hist.expected_remaining_cost(r.program, r.calls_done)
        if rest is not None:
            return max(0.0, rest - r.live_paid)
        per_call = hist.mean_call_cost(r.program)
        if per_call is None:
            prompt = max(r.live.values(), default=0)
            per_call = self.fair.cost(prompt, hist.mean_output(r.program))
        remaining = hist.expected_remaining_calls(r.program, r.calls_done)
        return per_call * (1.0 if remaining is None else remaining)

    def _idle(self, view: ClusterView, replica: int) -> bool:
        rv = view.replica(replica)
        return rv.running + rv.waiting == 0

    def _activate(self, r: _Run, replica: int, now: float, out: list[Decision]) -> None:
        was_paused = r.state == PAUSED
        if r.state == WAITING or r.replica is None:
            self._admitted += 1
            r.prio = self._admitted
        r.prepaid = self.fair.prepay(r.tenant, self._predicted_cost(r))
        r.state = ACTIVE
        r.replica = replica
        r.queued = False
        r.qver += 1
        fp = self._footprint(r)
        r.peak = max(r.peak, fp)
        self.budget.admit(r.run_id, replica, fp, r.shared, *self._projected(r, fp))
        self.router.joined(r.group, replica)
        heapq.heappush(self._victims[replica], (-r.prio, r.run_id))
        if was_paused and r.engine_paused:
            r.engine_paused = False
            if r.dispatched:  # its parked calls run again
                self._on_engine[r.tenant] = self._on_engine.get(r.tenant, 0) + r.dispatched
            out.append(Resume(r.run_id))
        elif was_paused:
            out.append(Resume(r.run_id))
        for call_id in r.held:
            self._send(r, call_id, now, out)
        r.held.clear()

    # --- call-level fair share -----------------------------------------------------------

    def _gated(self, tenant: str) -> bool:
        """Is the tenant ahead, in delivered service per weight, of another tenant whose calls
        are on the engines by more than `gate_tokens`? Admission balances committed work at
        program granularity, so between admissions one tenant's programs can run ahead (their
        contexts are longer, the other's wait on tools); its calls then wait, which gives the
        engines' time to the tenant behind. Work-conserving: nobody waits for a tenant that has
        nothing on the engines."""
        if not self._on_engine or not self._waiting:
            return False
        served = self.fair.served
        behind = min(
            (served.get(t, 0.0) for t in self._on_engine if t != tenant and t in self._waiting),
            default=None,
        )
        return behind is not None and served.get(tenant, 0.0) - behind > self.gate_tokens

    def _send(self, r: _Run, call_id: str, now: float, out: list[Decision]) -> None:
        """Dispatch an admitted run's call, or defer it while its tenant is ahead."""
        if self._gated(r.tenant):
            if not r.deferred:
                self._deferred.setdefault(r.tenant, []).append(r.run_id)
                self._deferred_since.setdefault(r.tenant, now)
            r.deferred.append(call_id)
            return
        self._dispatch(r, call_id, now, out)

    def _dispatch(self, r: _Run, call_id: str, now: float, out: list[Decision]) -> None:
        assert r.replica is not None
        self.rates.call_started(r.replica, now)
        prompt = r.live.get(call_id, 0)
        r.dispatched += 1
        self._on_engine[r.tenant] = self._on_engine.get(r.tenant, 0) + 1
        r.prepaid = self.fair.charge(r.tenant, prompt, 0, r.prepaid)
        r.live_paid += self.fair.cost(prompt, 0)
        self.fair.serve(r.tenant, prompt, 0)
        out.append(Dispatch(call_id, r.replica, priority=r.prio))

    def _release(self, now: float, out: list[Decision]) -> None:
        """Dispatch the deferred calls of tenants no longer ahead (all of them when no call is
        on the engines: the gate never idles an engine; and any held `GATE_MAX_WAIT_S`)."""
        if not self._deferred:
            return
        for tenant in sorted(self._deferred):
            waited = now - self._deferred_since.get(tenant, now)
            if self._on_engine and waited < GATE_MAX_WAIT_S and self._gated(tenant):
                continue
            self._deferred_since.pop(tenant, None)
            for run_id in self._deferred.pop(tenant):
                r = self._runs.get(run_id)
                if r is None or not r.deferred:
                    continue
                calls, r.deferred = r.deferred, []
                if r.state != ACTIVE:
                    r.held.extend(calls)
                    continue
                for call_id in calls:
                    self._dispatch(r, call_id, now, out)

    def _left_engine(self, tenant: str) -> None:
        n = self._on_engine.get(tenant, 0) - 1
        if n <= 0:
            self._on_engine.pop(tenant, None)
        else:
            self._on_engine[tenant] = n

    def _pause(self, r: _Run, now: float, out: list[Decision]) -> None:
        self.fair.refund(r.tenant, r.prepaid)
        r.prepaid = 0.0
        self.budget.release(r.run_id)
        self.router.left(r.group)
        r.state = PAUSED
        self.pauses += 1
        r.held.extend(r.deferred)  # deferred calls wait with the run (dropped from the gate)
        r.deferred.clear()
        if r.dispatched:
            # Calls on the engine must be parked; that also marks its KV evict-first.
            r.engine_paused = True
            for _ in range(r.dispatched):  # parked calls get no service: not "on the engines"
                self._left_engine(r.tenant)
            out.append(Pause(r.run_id))
        else:
            # Holding its next calls is the pause: its KV stays cached, ageing like any other,
            # and the run resumes from what is left of it (a router-level pause, counted by
            # the driver like every other).
            out.append(Pause(r.run_id, evict=False))
        if r.held or r.dispatched:
            self._enqueue(r, now)

    def _relieve(self, replica: int, now: float, view: ClusterView, out: list[Decision]) -> None:
        """Pause programs on `replica` until its footprint is back under the high threshold.
        Only when the engine is really short: the footprint is an estimate (output reserves,
        shared parts), and while the engine still has free blocks for the excess a pause would
        throw KV away for nothing."""
        if self.budget.count[replica] <= 1:
            return  # its last program: the engine serves any call that fits its whole pool
        rv = view.replica(replica)
        if self.budget.overflow(replica) <= rv.free_blocks * rv.block_size:
            return
        heap = self._victims[replica]
        while self.budget.overflow(replica) > 0 and heap and self.budget.count[replica] > 1:
            picked: list[tuple[int, str]] = []
            victim: _Run | None = None
            while heap and len(picked) < VICTIM_LOOKAHEAD:
                neg, run_id = heapq.heappop(heap)
                r = self._runs.get(run_id)
                if r is None or r.state != ACTIVE or r.replica != replica or r.prio != -neg:
                    continue
                picked.append((neg, run_id))
                if r.dispatched == 0:
                    victim = r
                    break
            if victim is None and picked and self.budget.current[replica] > self.budget.capacity[replica]:
                # Past the whole capacity: the newest program is parked even with work on the
                # engine (its in-flight call is recomputed later) rather than letting the
                # engine thrash. Between `high` and capacity, parking would throw work away
                # for nothing: admission stays closed until the footprint shrinks.
                victim = self._runs[picked[0][1]]
            for entry in picked:
                if victim is None or entry[1] != victim.run_id:
                    heapq.heappush(heap, entry)
            if victim is None:
                return
            self._pause(victim, now, out)

    # --- events --------------------------------------------------------------------------

    def on_run_started(self, event: RunStarted, now: float, view: ClusterView) -> Sequence[Decision]:
        self._ensure_capacity(view)
        self._runs[event.run_id] = _Run(event.run_id, event.program, event.tenant, event.group)
        self.fair.program_started(event.tenant)
        self.predictor.run_started(event.program, event.spec)
        return ()

    def on_call(self, event: CallArrived, now: float, view: ClusterView) -> Sequence[Decision]:
        self._ensure_capacity(view)
        call = event.call
        r = self._runs.get(call.run_id)
        if r is None:  # a call of a run we were not told about: treat it as a fresh run
            r = self._runs[call.run_id] = _Run(call.run_id, call.program, call.tenant, None)
            self.fair.program_started(call.tenant)
        self.predictor.call_arrived(r.run_id, now)
        if r.state == NEW:
            r.shared_tokens = float(call.shared_prefix_tokens)
            if call.shared_prefix_tokens:
                r.shared.append(
                    (("prefix", call.tenant, call.program, call.shared_prefix_tokens), r.shared_tokens)
                )
            if r.group is not None:
                head = float(max(0, call.prompt_len - call.shared_prefix_tokens))
                r.shared.append((("group", r.group), head))
                r.shared_tokens += head
            r.state = WAITING
        if not r.live and not r.acting and r.prev_prompt:
            self.predictor.history.record_growth(r.program, call.prompt_len - r.prev_prompt)
        if not r.live:
            r.prev_prompt = call.prompt_len
        r.bridge = 0.0
        r.last_call_final = call.hints.is_last_step
        r.live[call.call_id] = call.prompt_len
        r.hints[call.call_id] = (call.node, call.hints)
        out: list[Decision] = []
        if r.state == ACTIVE:
            assert r.replica is not None
            self._sync(r)
            self._relieve(r.replica, now, view, out)
        if r.state == ACTIVE:
            self._send(r, call.call_id, now, out)
        else:
            r.held.append(call.call_id)
            if not r.queued:
                self._enqueue(r, now)
            self._admit(now, view, out)
        return out

    def on_call_finished(self, event: CallFinished, now: float, view: ClusterView) -> Sequence[Decision]:
        r = self._runs.get(event.run_id)
        if r is None:
            return ()
        paid = r.live.pop(event.call_id, None)
        if paid is not None:
            r.live_paid = max(0.0, r.live_paid - self.fair.cost(paid, 0))
        node, hints = r.hints.pop(event.call_id, ("", CallHints()))
        if r.dispatched > 0 and r.replica is not None:
            self.rates.call_finished(
                r.replica, now, event.prompt_tokens - event.cached_tokens + event.output_tokens
            )
        if r.dispatched > 0:
            r.dispatched -= 1
            if not r.engine_paused:
                self._left_engine(r.tenant)
        self.fair.serve(r.tenant, 0, event.output_tokens)
        if r.peak > 0:
            self.predictor.history.record_footprint(r.program, r.calls_done, r.peak)
        r.peak = 0.0
        r.calls_done += 1
        ctx = float(event.prompt_tokens + event.output_tokens)
        r.last_ctx = ctx
        r.last_node = node
        if r.root_ctx is None:
            r.root_ctx = ctx
        # The prompt was charged at dispatch (so a burst of admissions at one instant already
        # tips the counters); the output is charged as it is known.
        r.prepaid = self.fair.charge(r.tenant, 0, event.output_tokens, r.prepaid)
        r.costs.append(self.fair.cost(event.prompt_tokens, event.output_tokens))
        if r.state == ACTIVE:
            # Settle: the commitment becomes what a run this far along still costs, so the
            # counters track each tenant's committed work as its programs progress, not the
            # guess made when they were admitted.
            self.fair.refund(r.tenant, r.prepaid)
            r.prepaid = self.fair.prepay(r.tenant, self._predicted_cost(r))
        self.predictor.history.record_output(r.program, event.output_tokens)
        self.predictor.history.record_call_cost(
            r.program, self.fair.cost(event.prompt_tokens, event.output_tokens)
        )
        out: list[Decision] = []
        reuse = self.predictor.reuses_prefix(r.program, node, hints)
        tool = self.predictor.next_tool(r.program, node, hints) if reuse else None
        if tool is not None:
            expires = now + TOOL_GRACE_S
            r.acting.append(_Branch(tool, ctx, expires_s=expires))
            self._seq += 1
            heapq.heappush(self._expected, (expires, self._seq, r.run_id))
        elif reuse:
            r.bridge = max(r.bridge, ctx)
        elif not r.live:
            self._forget(r, out)
        if self.budget.holds(r.run_id):
            self._sync(r)
            assert r.replica is not None
            self._relieve(r.replica, now, view, out)
        self._release(now, out)
        if not reuse or (r.replica is not None and self._idle(view, r.replica)):
            # KV was let go, or the engine has nothing left to run: room (or a reason, see
            # `_unhold_idle`) for a waiting program. Otherwise the footprint barely moved, and
            # the next tick retries admission: this keeps the hot path cheap.
            self._blocked = None
            self._admit(now, view, out)
        return out

    def on_tool_started(self, event: ToolStarted, now: float, view: ClusterView) -> Sequence[Decision]:
        r = self._runs.get(event.run_id)
        if r is None:
            return ()
        for branch in r.acting:
            if branch.tool == event.tool and not branch.started:
                branch.started = True
                break
        else:
            r.acting.append(_Branch(event.tool, r.last_ctx, True))
        r.tool_ver += 1
        if r.last_node:
            self.predictor.history.record_tool(r.program, r.last_node, event.tool)
        at = self.predictor.tool_started(r.run_id, event.tool, r.tenant, now, event.expected_latency_s)
        out: list[Decision] = []
        self._seq += 1
        heapq.heappush(self._prefetch, (at, self._seq, r.tool_ver, r.run_id))
        if self.budget.holds(r.run_id):
            self._sync(r)
            assert r.replica is not None
            self._relieve(r.replica, now, view, out)
        if self.budget.holds(r.run_id) and r.replica is not None:
            started = branch_of(r, event.tool)
            self._hold_or_release(r, started, event, now, view, out)
            if started is not None and not started.held:
                self._admit(now, view, out)  # its memory went back to the pool
        return out

    @staticmethod
    def _forget(r: _Run, out: list[Decision]) -> None:
        """The run's KV will not be read again: evict it before anything else (the one case of
        Bélády's rule that needs no prediction).

        Why no other next-use hints: a hint is per run, and an engine keys each cached block by
        the hint in force when the block was released, re-keying only the run's latest path.
        For a run with parallel branches (a map's workers) that key belongs to whichever branch
        last changed the hint, and hints of "needed now" rank the most recently used KV as the
        furthest among overdue ones: most-recently-used eviction. Measured: multiagent 512
        programs at concurrency 128 went from 1.13x to 1.25x FCFS's steps/min and 32 at 16 from
        1.12x to 1.07x its makespan without them; swe and rl-grpo did not move (their one branch
        is referenced while it runs, and tool gaps are short next to the pool's turnover).
        Pins and prefetches still come from the reuse predictor."""
        out.append(NextUse(r.run_id, math.inf))

    def _hold_or_release(
        self,
        r: _Run,
        branch: _Branch | None,
        event: ToolStarted,
        now: float,
        view: ClusterView,
        out: list[Decision],
    ) -> None:
        """Pin the run's context through its tool for the cost-benefit TTL (`pin_rule`), or
        release it: it stops counting in the budget and, if nothing else of the run is
        resident, the run leaves the replica until its next call (a pause with nothing on the
        engine: its KV ages out, or into a tier, and comes back by recompute or load)."""
        assert r.replica is not None
        if branch is None:
            return
        ttl: float | None = None
        if self.budget.overflow(r.replica) <= 0:
            rv = view.replica(r.replica)
            shared = min(r.shared_tokens, branch.ctx)
            cost = self.rates.reload_s(rv, shared, branch.ctx)
            if cost is None:  # nothing known about the engine yet: keep it (no policy's default)
                return
            cap = self.budget.capacity[r.replica]
            price = memory_price(self.budget.current[r.replica], cap, bool(self._waiting))
            fit = self.predictor.tool_fit(event.tool, r.tenant)
            ttl = hold_ttl(cost, price * (branch.ctx - shared) / cap, fit)
        if ttl is None:
            self._release_branch(r, branch, now, out)
            return
        if math.isfinite(ttl):
            self.pins += 1
            out.append(Pin(r.run_id, ttl))
            self._seq += 1
            heapq.heappush(self._holds, (now + ttl, self._seq, r.run_id, branch))

    def _release_branch(self, r: _Run, branch: _Branch, now: float, out: list[Decision]) -> None:
        branch.held = False
        if r.live or r.bridge or any(b.held for b in r.acting):
            self._sync(r)
            return
        self._pause(r, now, out)

    def _expire_holds(self, now: float, out: list[Decision]) -> None:
        """A pin's TTL passed with its tool still running: holding further costs more than it
        is expected to save, so the branch is released (see `pin_rule`)."""
        heap = self._holds
        while heap and heap[0][0] <= now:
            _, _, run_id, branch = heapq.heappop(heap)
            r = self._runs.get(run_id)
            if r is None or r.state != ACTIVE or not branch.held or not any(b is branch for b in r.acting):
                continue
            self._release_branch(r, branch, now, out)

    def on_tool_finished(self, event: ToolFinished, now: float, view: ClusterView) -> Sequence[Decision]:
        r = self._runs.get(event.run_id)
        self.predictor.tool_finished(event.tool, r.tenant if r is not None else "", event.duration_s)
        if r is None:
            return ()
        # The branch whose tool ran ends, not a still-expected one that happens to share the name.
        started = [i for i, b in enumerate(r.acting) if b.tool == event.tool and b.started]
        unstarted = [i for i, b in enumerate(r.acting) if b.tool == event.tool and not b.started]
        for i in (started or unstarted)[:1]:
            del r.acting[i]
        if self.budget.holds(r.run_id):
            self._sync(r)
        return ()

    def on_run_finished(self, event: RunFinished, now: float, view: ClusterView) -> Sequence[Decision]:
        r = self._runs.pop(event.run_id, None)
        if r is None:
            return ()
        if self.budget.holds(r.run_id):
            self.budget.release(r.run_id)
            self.router.left(r.group)
        self.fair.refund(r.tenant, r.prepaid)
        self.fair.program_finished(r.tenant)
        self.predictor.run_finished(r.run_id, r.program, r.calls_done)
        self.predictor.history.record_costs(r.program, r.costs)
        out: list[Decision] = []
        self._forget(r, out)
        self._admit(now, view, out)
        return out

    def on_tick(self, now: float, view: ClusterView) -> Sequence[Decision]:
        out: list[Decision] = []
        horizon = now + TICK_S
        heap = self._prefetch
        while heap and heap[0][0] <= horizon:
            _, _, ver, run_id = heapq.heappop(heap)
            r = self._runs.get(run_id)
            if r is not None and r.tool_ver == ver and r.acting and r.replica is not None:
                out.append(Prefetch(run_id, r.replica))
        self._drop_unstarted(now, view, out)
        self._expire_holds(now, out)
        self._release(now, out)
        if self._waiting:
            self._ensure_capacity(view)
            self._blocked = None  # footprints drift as calls finish: retry on every tick
            self._admit(now, view, out)
        return out

    def _drop_unstarted(self, now: float, view: ClusterView, out: list[Decision]) -> None:
        """Forget expected tool branches whose tool never started (`TOOL_GRACE_S` after their
        call): the prediction was wrong and their context is not held through a tool. Kept,
        they would count against the KV budget until the run ends; a map-reduce run whose
        workers' last rounds were predicted to call a tool would look several contexts larger
        than it is, and admission would leave most of the memory unused."""
        heap = self._expected
        while heap and heap[0][0] <= now:
            _, _, run_id = heapq.heappop(heap)
            r = self._runs.get(run_id)
            if r is None:
                continue
            kept = [b for b in r.acting if b.started or b.expires_s > now]
            if len(kept) == len(r.acting):
                continue
            r.acting = kept
            if self.budget.holds(r.run_id):
                self._sync(r)
                assert r.replica is not None
                self._relieve(r.replica, now, view, out)

    # --- reporting -----------------------------------------------------------------------

    def stats(self) -> dict[str, float]:
        """Numbers for the bench report: predictor accuracy, pins, pauses, steals."""
        out = self.predictor.accuracy()
        out["legato_pins"] = float(self.pins)
        out["legato_steals"] = float(self.router.steals)
        return out
