"""Legato's admission control: which programs hold memory on which replica, and when.

The state machine of a program run (`legato_run`: NEW -> WAITING -> ACTIVE <-> PAUSED) and
everything that moves it: admission in fair-share order while the KV budget fits (`KVBudget`,
`Router`), pauses when a replica is really short (`victims`), release of held tool contexts on
an idle engine, the hold-or-release decision through a tool (`pin_rule`), and the dispatch of
an admitted run's calls through the call-level fair-share gate (`FairGate`). The event
handlers that drive it are `legato_policy.Legato`'s; constants are listed there.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping, Sequence

from legato.scheduler.admission import KVBudget, SharedParts
from legato.scheduler.engine_rates import EngineRates
from legato.scheduler.events import CallFinished, CallHints
from legato.scheduler.fair_gate import FairGate
from legato.scheduler.fair_share import FairShare
from legato.scheduler.legato_run import (
    ACTIVE,
    HORIZONS,
    PAUSED,
    WAITING,
    Branch,
    Run,
    footprint,
    projected,
)
from legato.scheduler.pin_rule import hold_ttl, memory_price
from legato.scheduler.policy import ClusterView, Decision, Dispatch, Pause, ReplicaView, Resume, Unpin
from legato.scheduler.predictor import ReusePredictor
from legato.scheduler.regime import ThrashMeter
from legato.scheduler.routing import Router
from legato.scheduler.victims import idle_holders, pick_victim
from legato.scheduler.wait_queue import WaitQueue

# Engine priorities are lexicographic (band, admission order): a run ranked behind new programs
# (`Run.behind_new`) gets its admission number plus this, more than any admission count a
# server reaches, with the sum within a 32-bit int (an engine's priority field). An encoding of
# a two-level order, not a tuned value.
BEHIND_NEW = 1 << 30


def gates(view: ReplicaView) -> bool:
    """Does holding programs back pay on this replica? Only where reading its whole KV pool in
    a decode step costs more than reading the weights: there, past some batch, another
    sequence adds KV reads and little throughput, while the recomputation that overcommitting
    causes is pure loss, so admission packs programs under the pool's capacity. Where the whole
    pool reads faster than the weights (a small pool next to a big model: every decode step is
    weight-bound whatever fits), every sequence the budget held back would cost throughput
    nearly one for one, so the engine packs its memory itself, in admission order, and the
    policy only decides holds (pins that yield when memory runs out) — until the engine is
    measured to thrash (`regime.ThrashMeter`: recomputing KV it dropped costs more than the
    memory a gate leaves unused), where admission gates after all. Unknown facts: gate."""
    if view.decode_step_s is None or view.decode_s_per_ctx_token is None:
        return True
    pool = view.total_blocks * view.block_size
    return pool * view.decode_s_per_ctx_token > view.decode_step_s


def stall_defers(running: int, way_in_s: float, own_s: float, waited_s: float) -> bool:
    """Should a program that fits wait because bringing its context in would stall the batch?
    Its prefill (or reload) runs in the steps of the `running` calls, a compute-bound chunk per
    step, so each of them is delayed about `way_in_s`: `running x way_in_s` of other calls'
    time, against the `own_s` the program itself is expected to take from here. Where the stall
    is the larger, letting the calls running now finish first costs less in total (the
    exchange argument behind shortest-first), but the running set may never drain, so the
    program waits at most that stall (ski rental: what waiting costs it never exceeds what its
    start would cost the others); one whose stall is the smaller goes in at once."""
    stall_s = running * way_in_s
    return stall_s > own_s and waited_s < stall_s


class AdmissionControl:
    def __init__(self, weights: Mapping[str, float] | None, gate_tokens: float | None, tick_s: float) -> None:
        self.fair = FairShare(weights)
        self.budget = KVBudget(horizons=len(HORIZONS), low=1.0, high=1.0, safety=0.0)
        self.router = Router()
        self.predictor = ReusePredictor()
        self.rates = EngineRates()
        hist = self.predictor.history
        lead = (lambda: gate_tokens) if gate_tokens is not None else (lambda: hist.mean_call_cost())
        self.gate = FairGate(self.fair, lead, lambda: self.rates.mean_call_s() or tick_s)
        self._runs: dict[str, Run] = {}
        self._waiting = WaitQueue()
        self._victims: list[list[tuple[int, str]]] = []  # per replica: (-prio, run), a heap
        self.pool: list[float] = []  # per replica: KV capacity in tokens (the budget's, if gated)
        self.thrash = ThrashMeter()
        self.live_shared = SharedParts()  # of the programs running, whatever their state
        self._packs: list[bool] = []  # per replica: may let the engine pack memory (`regime`)
        self._tiered: list[bool] = []  # per replica: a tier parks a paused run's KV
        self._queued_fp = [0.0, 0]  # summed footprint of programs at enqueue, samples
        self._cycle = [0.0, 0]  # summed time between a run's consecutive calls, samples
        self._admitted = 0
        self._blocked: tuple[str, int, int] | None = None  # (head run, its qver, releases)
        self.pauses = 0  # the driver counts the same `Pause` decisions (one count, tested)

    def _ensure_capacity(self, view: ClusterView) -> None:
        if self.budget.replicas == view.num_replicas:
            return
        self.pool = []
        self._packs = []
        self._tiered = []
        caps = []
        for i in range(view.num_replicas):
            r = view.replica(i)
            pool = float(r.total_blocks * r.block_size)
            self.pool.append(pool)
            # Weighted fair share needs a queue to reorder: with several tenants, always gate.
            packs = len(self.fair.weights) <= 1 and not gates(r)
            self._packs.append(packs)
            self._tiered.append(bool(r.tiers))
            caps.append(math.inf if packs else pool)
        self.budget.set_capacity(caps)
        self._victims = [[] for _ in caps]

    def _measure(self, r: Run, event: CallFinished, now: float, view: ClusterView) -> None:
        """A call finished: count the KV its program had computed and the engine dropped
        (`regime.ThrashMeter`); on a replica that may let the engine pack its memory, gate
        admission at the pool's capacity while that recompute costs more than gating would, or
        while the live programs' shared parts overflow the memory that packs (`regime`)."""
        reused = r.reused.pop(event.call_id, 0.0)
        resident = r.resident.pop(event.call_id, math.inf)
        replica = r.replica
        if replica is None or replica >= len(self._packs):
            return
        _, hints = r.hints.get(event.call_id, ("", CallHints()))
        if r.calls_done and not hints.prefill_only and reused > 0.0:
            rv = view.replica(replica)
            cached = min(resident, float(event.cached_tokens))
            self.thrash.call_finished(r.run_id, rv, self.rates, reused, cached)
        if self._packs[replica]:
            self._choose_regime(replica, now, view)

    def _choose_regime(self, replica: int, now: float, view: ClusterView) -> None:
        """Gate a replica that may pack at its pool's capacity, or let it pack (`regime`)."""
        packing_pool = sum(pool for pool, packs in zip(self.pool, self._packs, strict=True) if packs)
        overflow = self.live_shared.tokens > packing_pool
        thrashing = self.thrash.thrashing(replica, now, self.budget, view.replica(replica), overflow)
        cap = self.pool[replica] if thrashing else math.inf
        if cap != self.budget.capacity[replica]:
            caps = list(self.budget.capacity)
            caps[replica] = cap
            self.budget.set_capacity(caps)
            self._blocked = None  # the budget changed: retry admission

    def _add_shared(self, r: Run, now: float, view: ClusterView) -> None:
        """A program's first call names its shared parts: where new ones overflow the memory
        that packs, the packing replicas gate before it is admitted (`_choose_regime`)."""
        if not self.live_shared.add(r.shared):
            return
        for replica, packs in enumerate(self._packs):
            if packs and math.isinf(self.budget.capacity[replica]):
                self._choose_regime(replica, now, view)

    def _note_resident(self, r: Run, call_id: str, reused: float, view: ClusterView) -> None:
        """On a packing replica with a tier, how much of the context a call reuses is still on
        the device as it arrives: `CallFinished.cached_tokens` counts a prefix loaded back from
        a tier as a hit, yet the engine dropped it and the load is paid (`_measure`)."""
        replica = r.replica
        if reused <= 0.0 or replica is None or replica >= len(self._packs):
            return
        if self._packs[replica] and self._tiered[replica]:
            r.resident[call_id] = float(view.resident_tokens(replica, r.run_id))

    def _ahead(self, r: Run, replica: int) -> float:
        """Calls from now to the run's next pause point on `replica` (`legato_run.projected`):
        the next call where a tier parks a paused run's KV, else until the run is next left
        with no call on the engine (learned per program)."""
        if self._tiered[replica]:
            return 1.0
        return self.predictor.history.calls_until_pausable(r.program)

    def _sync(self, r: Run) -> None:
        hist = self.predictor.history
        fp = footprint(r, hist)
        r.peak = max(r.peak, fp)
        assert r.replica is not None  # only admitted runs are synced
        self.budget.update(r.run_id, fp, *projected(r, fp, hist, self._ahead(r, r.replica)))

    def _need_fn(self, r: Run) -> Callable[[int], tuple[list[float], list[float]]]:
        """The run's projected need on each replica (the shared parts it would add and the
        distance to its next pause point differ between replicas)."""
        hist = self.predictor.history
        fp = footprint(r, hist)

        def need(replica: int) -> tuple[list[float], list[float]]:
            mean, var = projected(r, fp, hist, self._ahead(r, replica))
            shared = self.budget.shared_cost(replica, r.shared)
            return ([p + shared for p in mean] if shared else mean), var

        return need

    def _enqueue(self, r: Run, now: float) -> None:
        """Queue the run by its expected completion if served from now on: when it entered the system
        plus its predicted remaining calls times the measured call cycle (the mean time between a
        program's calls; until one is measured, the mean time a call takes, the cycle's lower bound
        and the whole of it for single-call programs), each call weighted by the memory it holds
        over the mean footprint. Shortest remaining work first among programs that came together,
        first come first served among equal ones, and a program paused half way keeps its place
        (it entered long ago and has less left); nothing starves, since a newer program's key only
        grows with its arrival."""
        if r.state not in (WAITING, PAUSED):
            raise AssertionError(f"enqueue of run {r.run_id} in state {r.state}")
        if r.entered_s is None:
            r.entered_s = now
        hist = self.predictor.history
        remaining = hist.expected_remaining_calls(r.program, r.calls_done)
        calls = 1.0 if remaining is None else remaining
        cycle = self._cycle_s()
        # Memory-time, not only time: a call holding k times the mean footprint counts as k
        # cycles (the mean is over footprints queued so far). A context grows by its program's
        # mean growth per call: counted at today's size, a program early in a long run looks as
        # cheap as one about to finish. A run is queued for a call that has arrived, which its
        # footprint holds; the j-th call after that one holds fp + j x growth.
        fp = footprint(r, hist)
        self._queued_fp[0] += fp
        self._queued_fp[1] += 1
        mean_fp = self._queued_fp[0] / self._queued_fp[1]
        if mean_fp > 0.0:
            growth = max(0.0, hist.mean_growth(r.program) or 0.0)
            cycle *= (fp + growth * (calls - 1) / 2) / mean_fp
        self._waiting.push(r, r.entered_s + calls * cycle, now)

    def _cycle_s(self) -> float:
        """The measured call cycle (mean time between a run's consecutive calls); until one is
        measured, the mean time a call takes (its lower bound); 0 before any call finished."""
        total, n = self._cycle
        return total / n if n else (self.rates.mean_call_s() or 0.0)

    def _cheapest_start(
        self, head: Run, sites: dict[int, ReplicaView], view: ClusterView, now: float
    ) -> Run | None:
        """The waiting program of `head`'s tenant to admit next: least queue key plus the shared
        parts it would add, counted like its footprint (one call cycle of their tokens over the
        mean queued footprint). A shared part (a system prompt, a database schema, an RL group's
        prompt) is held once per replica (`KVBudget`), so a program whose shared prefix is already
        held there adds only its private context and recomputes no shared prefix; admitting it
        first keeps the programs that share a prefix together, and the prefix cached. Keys are
        computed when a program is queued; which shared parts are held changes as programs come
        and go, so this is decided at admission (a scan of the tenant's waiting programs). A
        program that would stall the running calls of `sites` now (`_stalls`) is passed over;
        None when every one would."""
        queued, n = self._queued_fp
        if not n or queued <= 0.0:
            return None if self._stalls(head, sites, view, now) else head
        weight = self._cycle_s() / (queued / n)
        best: Run | None = None
        best_rank = (math.inf, 0)
        for key, seq, r in self._waiting.in_order(head.tenant, self._runs):
            if key > best_rank[0]:
                break  # a rank is its key plus a cost >= 0: nothing further can beat it
            added = min((self.budget.shared_cost(i, r.shared) for i in self._homes(r)), default=0.0)
            rank = (key + weight * added, seq)
            if rank < best_rank and not self._stalls(r, sites, view, now):
                best, best_rank = r, rank
        return best

    def _idle(self, view: ClusterView, replica: int) -> bool:
        rv = view.replica(replica)
        return rv.running + rv.waiting == 0

    # --- admission -----------------------------------------------------------------------

    def _admit(self, now: float, view: ClusterView, out: list[Decision]) -> None:
        """Admit waiting programs, fair-share order, while they fit somewhere and bringing the
        next one's context in does not cost the running calls more than it is worth."""
        sites = self._stall_sites(view) if self._waiting else {}
        while self._waiting:
            heads = {t: h for t in self._waiting.tenants() if (h := self._waiting.head(t, self._runs))}
            if not heads:
                return
            r = self._cheapest_start(heads[self.fair.pick(sorted(heads))], sites, view, now)
            if r is None:
                return  # retried at the next event or tick (`stall_defers` bounds the wait)
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
                steal_after_s=self._move_cost_s(r, view),
            )
            if replica is None:
                if self._unhold_idle(r, view, now, out):
                    continue
                self._blocked = (r.run_id, r.qver, self.budget.releases)
                return
            if r is heads[r.tenant]:
                self._waiting.pop(r.tenant)
            self._activate(r, replica, now, out)  # a run from mid-queue leaves a stale entry

    def _stall_sites(self, view: ClusterView) -> dict[int, ReplicaView]:
        """Replicas where a program may wait for the running calls (`stall_defers`): gating
        ones (a packing replica admits every program at once) with calls running. Unknown, so
        no wait: how long programs run (cycle 0: no call has finished), or what a prefill token
        costs (measured rates bound it from above, `engine_rates`, and would overstate every
        stall). Read once per admission round; a round with none skips the rule."""
        if self._cycle_s() <= 0.0:
            return {}
        sites = {}
        for i in range(self.budget.replicas):
            if not self._packs[i]:
                rv = view.replica(i)
                if rv.running and rv.prefill_s_per_token is not None:
                    sites[i] = rv
        return sites

    def _stalls(self, r: Run, sites: dict[int, ReplicaView], view: ClusterView, now: float) -> bool:
        """Does `r` wait for the running calls of every replica it could start on (`sites`),
        bringing its context in there costing them more than it is worth (`stall_defers`)?"""
        return bool(sites) and all(
            i in sites and self._stalls_on(r, sites[i], view, now) for i in self._homes(r)
        )

    def _homes(self, r: Run) -> Sequence[int]:
        """Replicas `r` could start on: its own once it has one, else any."""
        return range(self.budget.replicas) if r.replica is None else (r.replica,)

    def _stalls_on(self, r: Run, rv: ReplicaView, view: ClusterView, now: float) -> bool:
        hist = self.predictor.history
        fp = footprint(r, hist)
        if r.replica is None:  # a new program: its context is computed
            way_in = self.rates.recompute_s(rv, 0.0, fp)
        else:  # a paused one: what is not resident comes back the cheapest way (a tier load)
            resident = min(float(view.resident_tokens(rv.replica, r.run_id)), fp)
            way_in = self.rates.reload_s(rv, resident, fp)
        if way_in is None:
            return False
        remaining = hist.expected_remaining_calls(r.program, r.calls_done)
        own_s = (1.0 if remaining is None else remaining) * self._cycle_s()
        return stall_defers(rv.running, way_in, own_s, now - r.queued_s)

    def _move_cost_s(self, r: Run, view: ClusterView) -> float:
        """Recomputing the run's context on another replica: waiting longer than that for
        its home costs more than moving (ski rental); unknown: never moved for waiting."""
        if r.replica is None:
            return math.inf
        cost = self.rates.recompute_s(view.replica(r.replica), 0.0, r.last_ctx)
        return math.inf if cost is None else cost

    def _unhold_idle(self, r: Run, view: ClusterView, now: float, out: list[Decision]) -> bool:
        """A replica with nothing to run while `r` waits for memory: the programs holding KV
        through a tool, or for a next call that has not come, newest first, as many as `r`
        needs to fit, are released together, unless they are expected back before recomputing
        their contexts would pay for the idle engine (`_worth_idling`). Returns whether
        anything was released."""
        for replica in range(self.budget.replicas):
            if not self._idle(view, replica):
                continue
            need = self._need_fn(r)(replica)[0]
            chosen: list[Run] = []
            for v in idle_holders(self._victims[replica], self._runs, replica):
                chosen.append(v)
                if self.budget.fits(replica, need, without=[c.run_id for c in chosen]):
                    break
            peaks = [self.budget.peak_of(v.run_id) for v in chosen]
            freed = sum(peaks)
            if not chosen or any(
                self._worth_idling(v, view, now, peak / freed if freed > 0 else 1.0)
                for v, peak in zip(chosen, peaks, strict=True)
            ):
                continue
            for v in chosen:
                for b in v.acting:
                    b.held = False
                v.bridge = 0.0
                out.append(Unpin(v.run_id))
                self._mark_return_place(v, v.last_ctx, v.last_shared, view)
                self._pause(v, now, out)
            return True
        return False

    def _worth_idling(self, v: Run, view: ClusterView, now: float, share: float) -> bool:
        """Should `v` keep its context although its engine is idle? `pin_rule`'s TTL with
        holding priced at `v`'s share of the whole engine (1 engine-second per second: what the
        engine could run waits for the memory of the programs released together, and `share`
        is `v`'s part of that memory): an engine idle through a short tool loses less than
        recomputing the contexts when the tool returns (and, where memory fits only a few
        contexts, than the swap of working sets that releasing starts). A context bridged to a
        next call that has no tool to wait for has no latency distribution: ski rental, kept
        for as long as recomputing it takes (a client that went away must not hold it forever)."""
        assert v.replica is not None
        rv = view.replica(v.replica)
        held = [
            (b.ctx, b.shared, b.since_s, self.predictor.tool_fit(b.tool, v.tenant))
            for b in v.acting
            if b.held
        ]
        if v.bridge:
            held.append((v.bridge, v.last_shared, v.bridge_s, None))
        for ctx, shared, since_s, fit in held:
            cost = self.rates.reload_s(rv, min(shared, ctx), ctx)
            if cost is None:
                return True  # nothing known about the engine yet: keep it (see _hold_or_release)
            ttl = hold_ttl(cost, share, fit)
            if ttl is not None and now - since_s < ttl:
                return True
        return False

    def _predicted_cost(self, r: Run) -> float:
        """Fair-share cost the run is expected to consume from here: what past runs of the
        program still cost after as many calls (less what its live calls already paid); else
        its expected remaining calls x the mean cost per call (one call without history)."""
        hist = self.predictor.history
        rest = hist.expected_remaining_cost(r.program, r.calls_done)
        if rest is not None:
            return max(0.0, rest - r.live_paid)
        per_call = hist.mean_call_cost(r.program)
        if per_call is None:
            per_call = self.fair.cost(max(r.live.values(), default=0), r.max_output)
        remaining = hist.expected_remaining_calls(r.program, r.calls_done)
        return per_call * (1.0 if remaining is None else remaining)

    def _activate(self, r: Run, replica: int, now: float, out: list[Decision]) -> None:
        was_paused = r.state == PAUSED
        if r.state == WAITING or r.replica is None:
            self._admitted += 1
            r.prio = self._admitted
            self.router.joined(r.group, replica)  # a group member until it finishes
        elif r.released:
            # Its KV was let go through a tool: its place in the engine order kept nothing
            # resident, so it queues behind what is (module docstring, "Order").
            self._admitted += 1
            r.prio = self._admitted + (BEHIND_NEW if r.behind_new else 0)
        r.released = r.behind_new = False
        r.prepaid = self.fair.prepay(r.tenant, self._predicted_cost(r))
        r.state = ACTIVE
        r.replica = replica
        r.queued = False
        r.qver += 1
        hist = self.predictor.history
        fp = footprint(r, hist)
        r.peak = max(r.peak, fp)
        self.budget.admit(r.run_id, replica, fp, r.shared, *projected(r, fp, hist, self._ahead(r, replica)))
        heapq.heappush(self._victims[replica], (-r.prio, r.run_id))
        if was_paused:
            if r.engine_paused:
                r.engine_paused = False
                self.gate.entered(r.tenant, r.dispatched)  # its parked calls run again
            out.append(Resume(r.run_id))
        for call_id in r.held:
            self._send(r, call_id, now, out)
        r.held.clear()

    def _send(self, r: Run, call_id: str, now: float, out: list[Decision]) -> None:
        """Dispatch an admitted run's call, or defer it while its tenant is ahead."""
        if self._waiting and self.gate.gated(r.tenant, self._waiting):
            self.gate.defer(r, call_id, now)
            return
        self._dispatch(r, call_id, now, out)

    def _dispatch(self, r: Run, call_id: str, now: float, out: list[Decision]) -> None:
        assert r.replica is not None
        self.rates.call_started(r.replica, now)
        self.thrash.dispatched(r.replica, now)
        r.sent_s[call_id] = now
        prompt = r.live.get(call_id, 0)
        r.dispatched += 1
        self.gate.entered(r.tenant)
        r.prepaid = self.fair.charge(r.tenant, prompt, 0, r.prepaid)
        r.live_paid += self.fair.cost(prompt, 0)
        self.fair.serve(r.tenant, prompt, 0)
        out.append(Dispatch(call_id, r.replica, priority=r.prio))

    def _release_deferred(self, now: float, out: list[Decision]) -> None:
        for run_id in self.gate.due(now, self._waiting):
            r = self._runs.get(run_id)
            if r is None or not r.deferred:
                continue
            calls, r.deferred = r.deferred, []
            if r.state != ACTIVE:
                r.held.extend(calls)
                continue
            for call_id in calls:
                self._dispatch(r, call_id, now, out)

    def _pause(self, r: Run, now: float, out: list[Decision]) -> None:
        self.fair.refund(r.tenant, r.prepaid)
        r.prepaid = 0.0
        self.budget.release(r.run_id)
        r.state = PAUSED
        self.pauses += 1
        r.held.extend(r.deferred)  # deferred calls wait with the run (dropped from the gate)
        r.deferred.clear()
        if r.dispatched:
            # Calls on the engine must be parked; that also marks its KV evict-first.
            r.engine_paused = True
            for _ in range(r.dispatched):  # parked calls get no service: not "on the engines"
                self.gate.left(r.tenant)
            out.append(Pause(r.run_id))
        else:
            # Holding its next calls is the pause: its KV stays cached, ageing like any other
            # (into a tier where there is one), and the run resumes from what is left of it.
            out.append(Pause(r.run_id, evict=False))
        if r.held or r.dispatched:
            self._enqueue(r, now)

    def _relieve(self, replica: int, now: float, view: ClusterView, out: list[Decision]) -> None:
        """Pause programs on `replica` until its footprint is back within capacity — only when
        the engine is really short: the footprint is an estimate (output reserves), and while
        the engine has free blocks for the excess a pause would throw KV away for nothing. A
        program with calls on the engine is paused only while the calls on the engine do not
        fit its pool together (`_calls_fit`): where they fit, the excess is contexts held for
        later and estimates, which pausing idle programs releases, and pausing a running one
        would drop KV its call is reading (computed again after a wait in the queue)."""
        if self.budget.count[replica] <= 1:
            return  # its last program: the engine serves any call that fits its whole pool
        rv = view.replica(replica)
        if self.budget.overflow(replica) <= rv.free_blocks * rv.block_size:
            return
        while self.budget.overflow(replica) > 0 and self.budget.count[replica] > 1:
            over = self.budget.current[replica] > self.budget.capacity[replica]
            victim = pick_victim(self._victims[replica], self._runs, replica, over)
            if victim is None or (victim.dispatched and self._calls_fit(replica)):
                return
            self._pause(victim, now, out)

    def _calls_fit(self, replica: int) -> bool:
        """Do the prompts of the admitted programs' calls on `replica`'s engine fit its pool
        together (a scan of the programs, made only before pausing a running one)?"""
        on_engine = sum(
            r.live.get(call_id, 0)
            for r in self._runs.values()
            if r.state == ACTIVE and r.replica == replica
            for call_id in r.sent_s
        )
        return on_engine <= self.pool[replica]

    def _after_change(self, r: Run, now: float, view: ClusterView, out: list[Decision]) -> None:
        """The run's footprint changed: update the budget, relieve its replica if needed."""
        if self.budget.holds(r.run_id):
            self._sync(r)
            assert r.replica is not None
            self._relieve(r.replica, now, view, out)

    # --- hold or release through tools (pin_rule) ----------------------------------------

    def _hold_or_release(
        self, r: Run, branch: Branch, tool: str, now: float, view: ClusterView
    ) -> float | None:
        """The TTL to pin the branch for, or None to release it (see `pin_rule`); inf when
        nothing is known about the engine yet (keep it, as an engine with no policy does)."""
        assert r.replica is not None
        if self.budget.overflow(r.replica) > 0:
            return None
        shared = min(branch.shared, branch.ctx)
        cost = self.rates.reload_s(view.replica(r.replica), shared, branch.ctx)
        if cost is None:
            return math.inf
        cap = self.pool[r.replica]
        price = memory_price(self.budget.current[r.replica], cap)
        fit = self.predictor.tool_fit(tool, r.tenant)
        return hold_ttl(cost, price * (branch.ctx - shared) / cap, fit)

    def _release_branch(
        self, r: Run, branch: Branch, now: float, view: ClusterView, out: list[Decision]
    ) -> None:
        branch.held = False
        self.thrash.released(r.run_id)
        if r.live or r.bridge or any(b.held for b in r.acting):
            self._sync(r)
            return
        self._mark_return_place(r, branch.ctx, branch.shared, view)
        self._pause(r, now, out)

    def _mark_return_place(self, r: Run, ctx: float, shared: float, view: ClusterView) -> None:
        """Where a run releasing its context now goes in the engine order when it returns
        (module docstring of `legato_policy`, "Order"). It keeps its place on a gating replica
        (its engine is kept within its pool and preempts nothing) and while costs are unknown.
        Else it takes a new place at the end (`released`) when the way back is recomputation
        (no tier is cheaper); parked in a tier, when it is likelier to go on after its next call
        than a program just started is after its first (`ProgramHistory.outlasts_fresh`), behind
        every program admitted until it finishes too (`behind_new`: least expected remaining
        work first)."""
        r.released = r.behind_new = False
        assert r.replica is not None
        if math.isfinite(self.budget.capacity[r.replica]):
            return
        rv = view.replica(r.replica)
        shared = min(shared, ctx)
        recompute = self.rates.recompute_s(rv, shared, ctx)
        reload = self.rates.reload_s(rv, shared, ctx)
        if recompute is None or reload is None:
            return
        if reload >= recompute:
            r.released = True
        elif self.predictor.history.outlasts_fresh(r.program, r.calls_done):
            r.released = r.behind_new = True
