"""`legato`: Legato's own program-level policy (DESIGN.md, "Scheduler").

Every decision compares two costs measured on the engine it runs on (`EngineRates`: declared
by the driver, the simulator's from its cost model for the GPU and model; measured online from
call timings otherwise). Concerns, one module each:

- **Admission** (`admission.KVBudget`, `legato_run`, `legato_admission.gates`): on a replica
  where a decode step reading its whole KV pool costs more than reading the weights (a large
  pool: past some batch more sequences add KV reads, not throughput), a program's calls reach
  the engine only while the summed KV footprint of the admitted programs, projected to their
  next pause point (`legato_run.projected`: the next call, or for a map's workers the end of
  the fan-out, where a pause would drop KV in use), fits the pool; the rest wait in the
  policy, holding nothing. Where the whole pool reads faster than the weights (a small pool
  next to the model: every step is weight-bound), holding a program back would cost
  throughput one for one, so the engine packs its memory
  itself in admission order and the policy only decides holds (with several tenants the
  budget always gates: weighted fair share needs the queue) — until the engine is measured to
  thrash (`regime.ThrashMeter`: where memory fits only a few contexts the engine drops whole
  contexts and recomputes them; once that recompute costs more of its time than the memory a
  gate would leave unused, the replica gates, thunderagent's working set; it also gates, at
  once, while the live programs' distinct shared parts, such as one schema per database, add
  up to more than the memory that packs: packing them all would evict shared prefixes that
  admitted programs read again). When the footprint
  grows past the capacity and the engine has no free blocks left for the excess, whole
  programs are paused (`victims.pick_victim`: newest first, preferring ones with no call on
  the engine, and one with calls on the engine only while those calls do not fit the pool
  together), so the engine never thrashes. A replica with nothing to run while programs
  wait releases the KV held for programs inside tools (`_unhold_idle`: as many, newest first,
  as the waiting program needs), unless a tool is expected back before recomputing their
  contexts would pay for the idle engine (`_worth_idling`: the pin TTL with the whole engine's
  price split between them by the memory each holds: the engine idles once, however many
  hold it back). On a gating replica, a program that
  fits still waits while bringing its context in (a prefill, or a tier load for a paused one)
  would stall the running calls for longer in sum than the program is expected to run, and
  for at most that stall (`legato_admission.stall_defers`); programs that stall less go past
  it. A long document arriving among short calls then starts when they have finished.
- **Hold or release through a tool** (`pin_rule`): when a program starts a tool its context
  is pinned for the cost-benefit TTL over the tool's measured latency distribution (recompute
  or tier load vs. the memory held, priced by what waits for it), or released at once when
  no TTL gains anything; a TTL that passes with the tool still running releases it. Released
  programs leave the budget (a thunderagent-style pause of the whole program when nothing
  else of it is resident) and their KV ages out of the device, into a host/Redis tier when
  there is one (reloading from a tier is what makes releasing cheap there). Which of the two
  a replica does follows from its numbers (recompute or tier load vs. tool latency vs. memory
  held): long tools or a cheap reload release (thunderagent), short tools hold (continuum).
- **Order** (`wait_queue`, `fair_share`): tenants by weighted virtual token counters; within a
  tenant, least predicted remaining memory-time first (calls x cycle x footprint, the footprint
  growing by the program's mean growth per call), a waiting program gaining one call of priority
  per call cycle it waits (the mean time between a program's calls, measured), a paused program one
  call ahead of an equal new one. At admission a program also counts the shared parts it would add
  (`_cheapest_start`: a system prompt, a schema, an RL group's prompt not yet held on the replica),
  so programs sharing a prefix run together while it is cached. The engine runs admitted programs'
  calls in admission order. On a replica that does not gate (the engine packs and overcommits its
  memory itself, preempting the lowest priority), a program released through a tool whose way back
  is a recompute (no tier is the cheaper way back, `EngineRates.reload_s`) is, to the engine, a new
  request when it returns and takes a new place at the end of that order: its old place protected
  KV that is gone, and ranking it above calls already running would make them the engine's
  preemption victims, their computed KV thrown away. One parked in a tier, or on a gating replica
  (nothing is preempted there; the order only finishes programs in turn), keeps its place — except,
  parked in a tier, a program likelier to go on after its next call than one just started is after
  its first (run lengths with a decreasing hazard: most programs make one call, a few many): least
  expected remaining work first ranks it behind every program admitted until it finishes, those
  that came since and those still to come. A call-level gate (`fair_gate`) evens out service
  between admissions.
- **Cache**: `NextUse` of never for KV no call reads again (`_forget`), `Prefetch` when a tool
  is about to finish (a tick ahead); a branch expected to run a tool counts in the budget from
  its call's end until `TOOL_GRACE_S` passes without the tool starting.
- **Routing** (`routing.Router`): program and RL-group affinity; a program moves to another
  replica when that one is idle or it has waited longer than recomputing its context there.

Constants (none is a value searched on our workloads):

| constant | value | where it comes from |
| --- | --- | --- |
| `TICK_S` | 0.5 s | cadence of timers (TTLs, prefetch, retries); not a threshold |
| `TOOL_GRACE_S` | 2 ticks | a tool start is seen within a tick of the call's end |
| `HORIZONS` | 0, 1, 2, 4 … 512 cycles | numerical resolution of the projection (`legato_run`) |
| pause point | learned | next call with a tier; else calls until the run has no call on the engine |
| budget `low`/`high` | 1.0 | the pool's capacity; `safety` 0: the expected total |
| gating | engine | `gates`: KV pool read time vs. weight read time per decode step |
| gating, weight-bound | measured | `regime`: recompute while packing vs. what the slack is worth |
| gating, shared parts | budget | `regime`: live programs' distinct shared parts vs. the packing pool |
| idle release | engine | `_worth_idling`: pin TTL, the idle engine (price 1) split by memory |
| output reserve | learned | program's mean output, else all programs', else 0 (none seen) |
| remaining calls | learned | past runs' lengths, else all programs' mean, else 1 |
| ageing | learned | one call per measured call cycle |
| queue key | learned | remaining calls x cycle x mean footprint to come / mean queued footprint |
| shared parts at admission | budget | one cycle of the unheld shared tokens / mean queued footprint |
| prefill stall wait | engine | running calls x recompute (or tier load) time vs remaining calls x cycle |
| context growth | learned | mean prompt growth per sequential call (the program's, else all) |
| cycle, unmeasured | learned | the mean call time (a cycle's lower bound) |
| gate lead, wait | learned | mean call cost; mean call time (`fair_gate`) |
| steal wait | engine | recompute time of the program's context on the target |
| pin TTL | engine | `pin_rule.hold_ttl` from `EngineRates` and tool latencies |
| place after a tier park | learned | chance of a call after the next vs a new program's (run lengths) |

Every per-event step is O(live calls of the program + tenants + log programs), except the
victim scans on overflow and on an idle engine (O(programs on the replica)) and the choice of
the next program to admit (the tenant's waiting programs in key order, until the next key exceeds
the best rank found: usually the head, at worst all of them, each priced for its stall).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from legato.scheduler.due_queue import DueQueue
from legato.scheduler.events import (
    CallArrived,
    CallFinished,
    CallHints,
    RunFinished,
    RunStarted,
    TenantWeight,
    ToolFinished,
    ToolStarted,
)
from legato.scheduler.legato_admission import AdmissionControl
from legato.scheduler.legato_run import (
    ACTIVE,
    NEW,
    WAITING,
    Branch,
    Run,
    branch_of,
    reused_context,
)
from legato.scheduler.policy import (
    BasePolicy,
    ClusterView,
    Decision,
    NextUse,
    Pin,
    PolicyTraits,
    Prefetch,
)

TICK_S = 0.5
TOOL_GRACE_S = 2 * TICK_S


class Legato(AdmissionControl, BasePolicy):
    name = "legato"
    traits = PolicyTraits(eviction="next-use", tick_s=TICK_S, pin_yield=True)

    def __init__(
        self, weights: Mapping[str, float] | None = None, *, gate_tokens: float | None = None
    ) -> None:
        super().__init__(weights, gate_tokens, TICK_S)
        self._prefetch: DueQueue[tuple[int, str]] = DueQueue()  # at tool end: (tool_ver, run)
        self._expected: DueQueue[str] = DueQueue()  # at a branch's grace end: run
        self._holds: DueQueue[tuple[str, Branch]] = DueQueue()  # at a pin's TTL end
        self.pins = 0

    # --- events --------------------------------------------------------------------------

    def on_run_started(self, event: RunStarted, now: float, view: ClusterView) -> Sequence[Decision]:
        self._ensure_capacity(view)
        self._runs[event.run_id] = Run(event.run_id, event.program, event.tenant, event.group)
        self.fair.program_started(event.tenant)
        self.predictor.run_started(event.program, event.spec)
        return ()

    def on_call(self, event: CallArrived, now: float, view: ClusterView) -> Sequence[Decision]:
        self._ensure_capacity(view)
        call = event.call
        r = self._runs.get(call.run_id)
        if r is None:  # a call of a run we were not told about: treat it as a fresh run
            r = self._runs[call.run_id] = Run(call.run_id, call.program, call.tenant, None)
            self.fair.program_started(call.tenant)
        self.predictor.call_arrived(r.run_id, now)
        if r.state == NEW:
            self._first_call(r, event)
            self._add_shared(r, now, view)
        warm = call.hints.prefill_only  # a speculative prefill says nothing about the program's shape
        if not warm and not r.live and not r.acting and r.prev_prompt:
            self.predictor.history.record_growth(r.program, call.prompt_len - r.prev_prompt)
        if not warm and not r.live:
            r.prev_prompt = call.prompt_len
            if r.last_call_s is not None:
                self._cycle[0] += now - r.last_call_s
                self._cycle[1] += 1
            r.last_call_s = now
        r.bridge = 0.0
        if not warm:
            r.last_call_final = call.hints.is_last_step
            r.max_output = call.sampling.max_tokens
        r.live[call.call_id] = call.prompt_len
        r.hints[call.call_id] = (call.node, call.hints)
        reused = r.reused[call.call_id] = reused_context(call, r.last_ctx)
        self._note_resident(r, call.call_id, reused, view)
        if r.root_ctx is None:  # the first call: its context becomes the first context
            shared, root = r.shared_tokens, float(call.prompt_len)
        elif reused > 0:  # continues a context of the run
            shared, root = r.shared_tokens, min(reused, r.lineage.pop(reused, r.root_ctx))
        else:  # opens with a prompt of its own (a sub-agent)
            shared, root = float(call.shared_prefix_tokens), 0.0
        r.call_shared[call.call_id] = shared
        r.call_root[call.call_id] = root
        out: list[Decision] = []
        self._after_change(r, now, view, out)
        if r.state == ACTIVE:
            self._send(r, call.call_id, now, out)
        else:
            r.held.append(call.call_id)
            if not r.queued:
                self._enqueue(r, now)
            self._admit(now, view, out)
        return out

    @staticmethod
    def _first_call(r: Run, event: CallArrived) -> None:
        call = event.call
        r.shared_tokens = float(call.shared_prefix_tokens)
        if call.shared_prefix_tokens:
            key = ("prefix", call.tenant, call.program, call.shared_prefix_tokens)
            r.shared.append((key, r.shared_tokens))
        if r.group is not None:
            group_len = call.prompt_len if call.group_prefix_tokens is None else call.group_prefix_tokens
            head = float(max(0, group_len - call.shared_prefix_tokens))
            r.shared.append((("group", r.group), head))
            r.shared_tokens += head
        r.state = WAITING

    def on_call_finished(self, event: CallFinished, now: float, view: ClusterView) -> Sequence[Decision]:
        r = self._runs.get(event.run_id)
        if r is None:
            return ()
        self._measure(r, event, now, view)
        node, hints = self._settle_call(r, event, now)
        out: list[Decision] = []
        ctx = r.last_ctx
        if hints.prefill_only:  # the warmed prefix is what the run's next call starts with
            reuse, tool, ctx = True, None, float(event.prompt_tokens + event.output_tokens)
        else:
            reuse = self.predictor.reuses_prefix(r.program, node, hints)
            tool = self.predictor.next_tool(r.program, node, hints) if reuse else None
        if tool is not None:
            r.acting.append(
                Branch(tool, ctx, r.last_shared, r.last_root, expires_s=now + TOOL_GRACE_S, since_s=now)
            )
            self._expected.push(now + TOOL_GRACE_S, r.run_id)
        elif reuse:
            r.bridge = max(r.bridge, ctx)
            r.bridge_s = now
        elif not r.live and not r.bridge and not any(b.started or now < b.expires_s for b in r.acting):
            self._forget(r, out)  # nothing of the run waits to read its KV (a branch in a tool would)
        self._after_change(r, now, view, out)
        self._release_deferred(now, out)
        if not reuse or (r.replica is not None and self._idle(view, r.replica)):
            # KV was let go, or the engine has nothing left to run (see `_unhold_idle`).
            # Otherwise the footprint barely moved and the next tick retries admission.
            self._blocked = None
            self._admit(now, view, out)
        return out

    def _settle_call(self, r: Run, event: CallFinished, now: float) -> tuple[str, CallHints]:
        """Account a finished call: service, rates, what the program's history learns."""
        hist = self.predictor.history
        paid = r.live.pop(event.call_id, None)
        if paid is not None:
            r.live_paid = max(0.0, r.live_paid - self.fair.cost(paid, 0))
        node, hints = r.hints.pop(event.call_id, ("", CallHints()))
        r.last_shared = r.call_shared.pop(event.call_id, r.shared_tokens)
        root = r.call_root.pop(event.call_id, 0.0)
        sent = r.sent_s.pop(event.call_id, None)
        if sent is not None:
            self.rates.record_call(now - sent)
        if r.dispatched > 0:
            if r.replica is not None:
                computed = event.prompt_tokens - event.cached_tokens + event.output_tokens
                self.rates.call_finished(r.replica, now, computed)
            r.dispatched -= 1
            if not r.engine_paused:
                self.gate.left(r.tenant)
        self.fair.serve(r.tenant, 0, event.output_tokens)
        if hints.prefill_only:  # served and charged above; it teaches the history nothing
            return node, hints
        if r.peak > 0:
            hist.record_footprint(r.program, r.calls_done, r.peak)
        r.peak = 0.0
        r.calls_done += 1
        self._known_calls(r, r.calls_done)
        r.last_ctx = float(event.prompt_tokens + event.output_tokens)
        r.last_node = node
        r.last_root = root
        if r.root_ctx is None:
            r.root_ctx = r.last_root = r.last_ctx
        r.lineage[r.last_ctx] = r.last_root
        # The prompt was charged at dispatch; the output is charged as it is known.
        r.prepaid = self.fair.charge(r.tenant, 0, event.output_tokens, r.prepaid)
        cost = self.fair.cost(event.prompt_tokens, event.output_tokens)
        r.costs.append(cost)
        if r.state == ACTIVE:
            # Settle: the commitment becomes what a run this far along still costs.
            self.fair.refund(r.tenant, r.prepaid)
            r.prepaid = self.fair.prepay(r.tenant, self._predicted_cost(r))
        hist.record_output(r.program, event.output_tokens)
        hist.record_call_cost(r.program, cost)
        hist.record_call_end(r.program, not r.live)
        return node, hints

    def on_tool_started(self, event: ToolStarted, now: float, view: ClusterView) -> Sequence[Decision]:
        r = self._runs.get(event.run_id)
        if r is None:
            return ()
        for b in r.acting:
            if b.tool == event.tool and not b.started:
                b.started = True
                break
        else:
            # A tool nobody predicted: the context its call bridged to a next call now waits on
            # the tool. The branch counts it, and releasing the branch must release it (a
            # bridge left behind would hold the budget until a next call that may never come).
            r.acting.append(Branch(event.tool, r.last_ctx, r.last_shared, r.last_root, True, since_s=now))
            r.bridge = 0.0
        r.tool_ver += 1
        self._known_calls(r, r.calls_done + 1)  # a next call reads the tool's result
        if r.last_node:
            self.predictor.history.record_tool(r.program, r.last_node, event.tool)
        at = self.predictor.tool_started(r.run_id, event.tool, r.tenant, now, event.expected_latency_s)
        self._prefetch.push(at - TICK_S, (r.tool_ver, r.run_id))
        out: list[Decision] = []
        self._after_change(r, now, view, out)
        started = branch_of(r, event.tool)
        if started is None or not self.budget.holds(r.run_id) or r.replica is None:
            return out
        ttl = self._hold_or_release(r, started, event.tool, now, view)
        if ttl is None:
            self._release_branch(r, started, now, view, out)
            self._admit(now, view, out)  # its memory went back to the pool
        elif math.isfinite(ttl):
            self.pins += 1
            out.append(Pin(r.run_id, ttl))
            self._holds.push(now + ttl, (r.run_id, started))
        return out

    def _known_calls(self, r: Run, calls: int) -> None:
        """The run is known to make at least `calls` calls (`ProgramHistory.record_progress`)."""
        if calls > r.known_calls:
            self.predictor.history.record_progress(r.program, calls, r.known_calls)
            r.known_calls = calls

    @staticmethod
    def _forget(r: Run, out: list[Decision]) -> None:
        """The run's KV will not be read again: evict it before anything else (the one case of
        Bélády's rule that needs no prediction). No other next-use hints: a hint is per run,
        and for a run with parallel branches (a map's workers) the engine's key belongs to
        whichever branch last changed it, which ranked the most recently used KV furthest."""
        out.append(NextUse(r.run_id, math.inf))

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
        self.budget.release(r.run_id)
        self.thrash.forget(r.run_id)
        self.live_shared.remove(key for key, _ in r.shared)
        if r.prio:
            self.router.left(r.group)
        self.fair.refund(r.tenant, r.prepaid)
        self.fair.program_finished(r.tenant)
        self.predictor.run_finished(r.run_id, r.program, r.calls_done, r.known_calls)
        self.predictor.history.record_costs(r.program, r.costs)
        out: list[Decision] = []
        self._forget(r, out)
        self._admit(now, view, out)
        return out

    def on_tenant_weight(self, event: TenantWeight, now: float, view: ClusterView) -> Sequence[Decision]:
        self.fair.set_weight(event.tenant, event.weight)
        return ()

    def on_tick(self, now: float, view: ClusterView) -> Sequence[Decision]:
        out: list[Decision] = []
        for ver, run_id in self._prefetch.pop_due(now):
            r = self._runs.get(run_id)
            if r is not None and r.tool_ver == ver and r.acting and r.replica is not None:
                out.append(Prefetch(run_id, r.replica))
        for run_id in self._expected.pop_due(now):
            self._drop_unstarted(run_id, now, view, out)
        for run_id, branch in self._holds.pop_due(now):
            # The TTL passed with the tool still running: holding further costs more than it
            # is expected to save.
            r = self._runs.get(run_id)
            if r is not None and r.state == ACTIVE and branch.held and any(b is branch for b in r.acting):
                self._release_branch(r, branch, now, view, out)
        self._release_deferred(now, out)
        if self._waiting:
            self._ensure_capacity(view)
            self._blocked = None  # footprints drift as calls finish: retry on every tick
            self._admit(now, view, out)
        return out

    def _drop_unstarted(self, run_id: str, now: float, view: ClusterView, out: list[Decision]) -> None:
        """Forget expected tool branches whose tool never started (`TOOL_GRACE_S` after their
        call): the prediction was wrong (a map body's last round has no tool) and their
        context is not held through a tool; kept, it would hold budget until the run ends."""
        r = self._runs.get(run_id)
        if r is None:
            return
        kept = [b for b in r.acting if b.started or b.expires_s > now]
        if len(kept) == len(r.acting):
            return
        r.acting = kept
        self._after_change(r, now, view, out)

    # --- reporting -----------------------------------------------------------------------

    def stats(self) -> dict[str, float]:
        """Numbers for the bench report: predictor accuracy, pins, steals, and the share of
        time replicas where the engine may pack spent gated (`regime`)."""
        out = self.predictor.accuracy()
        out["legato_pins"] = float(self.pins)
        out["legato_steals"] = float(self.router.steals)
        out["legato_gated_share"] = self.thrash.gated_share()
        return out
