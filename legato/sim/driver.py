"""Discrete-event simulator: replays a `Workload` under a pure policy, in virtual time.

A closed-loop client keeps at most `concurrency` programs in flight: program i (in arrival
order) is submitted at max(its arrival_s, the time a client slot frees). A program's call
arrives when its dependencies (call + tool step) have finished; a tool step takes its
`tool_latency_s` of virtual time. The policy sees exactly what a runtime would — `RunStarted`,
`CallArrived` (with hints: next tool, the mean latency seen so far for that tool, last step),
`CallFinished`, `ToolStarted`, `ToolFinished`, `RunFinished`, `Tick` — and its decisions are
applied to the simulated replicas at their next step boundary.

Determinism: one event heap ordered by (time, sequence number); no wall clock, no randomness,
no iteration over sets or `hash()`-ordered containers. Same inputs give the same `RunOutcome`.

Accounting (`RunOutcome`): `cached_prompt_tokens` counts the prefix-cache hit of each call's
*first* admission (capped at prompt - 1 tokens, as the engine always recomputes the last one);
`prefill_tokens_computed` counts every prefilled token, recomputation after preemption included;
`service_by_tenant` uses the VTC cost 1 x input + 2 x output tokens.

KV tiers (`SimConfig.tiers`, `sim/tiers.py`): evicted device blocks go to host RAM, then Redis;
an admission asks `legato.cache.load_cost.plan_load` whether to load or recompute, and tokens
loaded from a tier count as prefix-cache hits (also counted per tier in `extra`:
`tier_<name>_{offloaded,loaded,prefetched}_bytes`, `tier_<name>_hit_tokens`, capacity and peak
blocks, link time `tier_<name>_{write,read}_busy_s`, and `tier_load_stall_s`). `Prefetch`
decisions load a run's tiered KV back early.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from legato.engine_adapter.base import SamplingParams
from legato.scheduler.apply import DecisionApplier
from legato.scheduler.events import (
    CallArrived,
    CallFinished,
    Event,
    LLMCall,
    RunFinished,
    Tick,
    ToolFinished,
    ToolStarted,
)
from legato.scheduler.policy import Decision, Policy
from legato.sim.client import (
    SharedPrefixes,
    TenantLedger,
    ToolMeans,
    arrival_order,
    dependents,
    run_started,
)
from legato.sim.config import SimConfig
from legato.sim.control import AddCall, ForgetRun, SimControl, SimHooks, UnpinRun
from legato.sim.engine import SimEngine, SimRequest
from legato.sim.hardware import tier_specs
from legato.sim.kv_pool import UNLIMITED_BLOCKS, KVPool
from legato.sim.outcome import ProgramOutcome, RunOutcome
from legato.sim.tiers import SimTiers
from legato.sim.views import SimClusterView, build_outcome
from legato.sim.workload import ProgramSpec, Segment, Workload, reused_context_tokens

SWAP_SPACE_GB = 4 * 2**30 / 1e9  # vLLM's default --swap-space: 4 GiB per GPU
_SAMPLING = SamplingParams(max_tokens=4096)  # the simulator never samples; outputs come from the spec

# event kinds, in tie-break order irrelevant (sequence numbers order equal times)
_SUBMIT, _TOOL_DONE, _STEP, _KICK, _PIN_EXPIRE, _TICK = range(6)


@dataclass(frozen=True, slots=True)
class CallTrace:
    """When one call became ready, was dispatched, first admitted, finished (tests)."""

    call_id: str
    ready_s: float
    dispatched_s: float
    admitted_s: float
    finished_s: float
    replica: int


@dataclass(slots=True)
class _Prog:
    spec: ProgramSpec
    index: int
    run_id: str
    waiting_deps: list[int] = field(default_factory=list)
    dependents: list[list[int]] = field(default_factory=list)
    steps_left: int = 0
    submitted_s: float = 0.0
    prompt_tokens: int = 0
    output_tokens: int = 0
    calls_done: int = 0
    active_calls: int = 0  # arrived, not finished
    tool_ends: dict[int, float] = field(default_factory=dict)  # call index -> its step's end time
    prompt_lens: list[int] = field(default_factory=list)


class _Oracle:
    """Exact future knowledge for clairvoyant policies (the driver knows every tool's end)."""

    def __init__(self, sim: _Sim) -> None:
        self._sim = sim

    def next_use_s(self, run_id: str, now: float) -> float:
        p = self._sim.progs_by_run.get(run_id)
        if p is None or p.steps_left == 0:
            return math.inf
        if p.active_calls:
            return now
        best = math.inf
        for j, t in p.tool_ends.items():
            if p.dependents[j] and t < best:
                best = t
        return best


class _Sim:
    def __init__(
        self,
        workload: Workload,
        policy: Policy,
        config: SimConfig,
        concurrency: int,
        progress: Callable[[int, int], None] | None,
        check: bool,
        trace: list[CallTrace] | None,
        decisions: list[Decision] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if config.replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {config.replicas}")
        specs = tier_specs(config.tiers)
        if not specs and policy.traits.preemption == "swap":
            # Swap-based preemption (vLLM's --swap-space, 4 GiB per GPU by default): the
            # engine's CPU swap space is a host tier, so preempted KV is reloaded, not recomputed.
            specs = tier_specs((f"host:{SWAP_SPACE_GB}",))
        self.tier_specs = specs
        self.policy = policy
        self.config = config
        self.concurrency = concurrency
        self.progress = progress
        self.trace = trace
        cost = config.cost_model()
        if policy.traits.unlimited_kv:
            blocks = UNLIMITED_BLOCKS
        elif config.kv_blocks is not None:
            blocks = config.kv_blocks
        else:
            blocks = cost.kv_capacity_blocks(config.block_size)
        step_tokens, seats = config.batch_limits()
        self.engines = [
            SimEngine(
                i,
                cost,
                KVPool(blocks, config.block_size, policy.traits.eviction),
                max_num_batched_tokens=step_tokens,
                max_num_seqs=seats,
                check=check,
                pin_yield=policy.traits.pin_yield,
                swap=policy.traits.preemption == "swap",
                victim=policy.traits.victim,
                reserve_output=policy.traits.reserve_output,
                max_new_tokens=_SAMPLING.max_tokens,
            )
            for i in range(config.replicas)
        ]
        if specs and not policy.traits.unlimited_kv:  # an infinite device pool never offloads
            kv_bytes = cost.model.kv_bytes_per_token
            for e in self.engines:
                e.pool.tiers = SimTiers(specs, config.block_size, kv_bytes, e.pool._key)
                e.pool.offload_evictions = bool(config.tiers)
        self.specs = arrival_order(workload)
        self.workload = workload
        self.progs_by_run: dict[str, _Prog] = {}
        self.run_index: dict[str, int] = {}
        self.pending: dict[str, tuple[_Prog, int]] = {}  # arrived, not yet dispatched
        self.requests: dict[str, tuple[_Prog, int, SimRequest, int]] = {}
        self.ready_s: dict[str, float] = {}
        self.dispatched_s: dict[str, float] = {}
        self.heap: list[tuple[float, int, int, int, int]] = []
        self.seq = 0
        self.now = 0.0
        self.outcomes: list[ProgramOutcome] = []
        self.ledger = TenantLedger(self.specs)
        self.tools = ToolMeans()
        self.shared_prefixes = SharedPrefixes(workload)
        self.next_prog = 0
        self.done = 0
        # Engine facts every ReplicaView carries (see `CostModel.engine_facts`).
        self.view = SimClusterView(self.engines, self._prompt_of, self.run_index, cost.engine_facts())
        hooks = SimHooks(
            now=lambda: self.now,
            awaits_dispatch=self.pending.__contains__,
            new_call=self._new_call,
            schedule_step=lambda r, end, version: self.push(end, _STEP, r, version),
            schedule_kick=lambda r: self.push(self.now, _KICK, r),
            schedule_expiry=lambda run, version, at: self.push(at, _PIN_EXPIRE, run, version),
        )
        self.control = SimControl(self.engines, self.run_index, hooks, has_tiers=bool(self.tier_specs))
        self.applier = DecisionApplier(self.control, record=decisions)
        self._progress_every = max(1, len(self.specs) // 100)

    # --- event plumbing ------------------------------------------------------------------

    def push(self, t: float, kind: int, a: int = 0, b: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, a, b))

    def emit(self, event: Event) -> None:
        self.applier.apply(self.policy.on_event(event, self.now, self.view))

    def run(self) -> RunOutcome:
        policy = self.policy
        if policy.traits.oracle:
            policy.set_oracle(_Oracle(self))
        for _ in range(min(self.concurrency, len(self.specs))):
            self._submit_next(0.0)
        if policy.traits.tick_s is not None and self.specs:
            self.push(self.specs[0].arrival_s, _TICK)
        heap = self.heap
        while heap and self.done < len(self.specs):
            t, _, kind, a, b = heapq.heappop(heap)
            self.now = t
            if kind == _STEP:
                self._on_step(a, b)
            elif kind == _TOOL_DONE:
                self._on_tool_done(a, b)
            elif kind == _SUBMIT:
                self._on_submit(a)
            elif kind == _KICK:
                self.control.kicked[a] = False
                self._maybe_plan(a)
            elif kind == _PIN_EXPIRE:
                self.control.op(self.control.pin_home.get(a, 0), UnpinRun(a, b))
            elif kind == _TICK:
                self.emit(Tick())
                tick = policy.traits.tick_s
                assert tick is not None
                self.push(t + tick, _TICK)
        if self.done < len(self.specs):
            stuck = sorted(self.pending)[:5]
            raise RuntimeError(
                f"simulation stalled with {len(self.specs) - self.done} programs unfinished; "
                f"undispatched calls: {stuck} (does the policy dispatch every call?)"
            )
        if self.progress is not None:
            self.progress(self.done, len(self.specs))
        return build_outcome(
            self.policy, self.outcomes, self.engines, self.ledger, self.control, self.config, self.tier_specs
        )

    # --- programs ------------------------------------------------------------------------

    def _submit_next(self, now: float) -> None:
        if self.next_prog >= len(self.specs):
            return
        i = self.next_prog
        self.next_prog += 1
        self.push(max(self.specs[i].arrival_s, now), _SUBMIT, i)

    def _on_submit(self, i: int) -> None:
        spec = self.specs[i]
        n = len(spec.calls)
        p = _Prog(spec, i, spec.program_id, submitted_s=self.now, steps_left=n)
        p.waiting_deps = [len(c.deps) for c in spec.calls]
        p.prompt_lens = [c.prompt_tokens for c in spec.calls]
        p.dependents = dependents(spec)
        self.progs_by_run[p.run_id] = p
        self.run_index[p.run_id] = i
        self.ledger.submitted(spec)
        self.emit(run_started(spec))
        if n == 0:
            self._finish_program(p)
            return
        for j in range(n):
            if p.waiting_deps[j] == 0:
                self._arrive(p, j)

    def _arrive(self, p: _Prog, j: int) -> None:
        cs = p.spec.calls[j]
        call_id = f"{p.run_id}#{j}"
        prompt = cs.prompt
        shared = sum(seg.tokens for seg in self.shared_prefixes.leading(prompt))
        hints = self.tools.hints(cs.tool, not p.dependents[j])
        call = LLMCall(
            call_id,
            p.run_id,
            p.spec.kind or "program",
            cs.node,
            p.spec.tenant,
            (),
            _SAMPLING,
            shared,
            hints,
            num_prompt_tokens=p.prompt_lens[j],
            reused_context_tokens=reused_context_tokens(p.spec.calls, j),
        )
        p.active_calls += 1
        self.pending[call_id] = (p, j)
        self.ready_s[call_id] = self.now
        self.emit(CallArrived(call))

    def _on_call_done(self, req: SimRequest) -> None:
        p, j, _, replica = self.requests.pop(req.call_id)
        cs = p.spec.calls[j]
        p.active_calls -= 1
        p.calls_done += 1
        prompt = req.prompt_len
        p.prompt_tokens += prompt
        p.output_tokens += cs.output_tokens
        self.ledger.charge(p.spec, prompt, cs.output_tokens, self.now)
        if self.trace is not None:
            self.trace.append(
                CallTrace(
                    req.call_id,
                    self.ready_s[req.call_id],
                    self.dispatched_s[req.call_id],
                    req.first_admit_s,
                    self.now,
                    replica,
                )
            )
        # When the step ends (its tool's end, or now: dependents follow at once) is known before
        # the policy hears of the finish, so an oracle's next-use hint already counts it.
        p.tool_ends[j] = self.now + (cs.tool_latency_s if cs.tool is not None else 0.0)
        queued = req.first_admit_s - self.dispatched_s[req.call_id]
        finished = CallFinished(
            req.call_id, p.run_id, prompt, cs.output_tokens, req.hit_tokens, "length", queued
        )
        self.emit(finished)
        if cs.tool is not None:
            self.emit(ToolStarted(p.run_id, cs.tool, self.tools.mean(cs.tool)))
            self.push(self.now + cs.tool_latency_s, _TOOL_DONE, p.index, j)
        else:
            del p.tool_ends[j]
            self._step_done(p, j)

    def _on_tool_done(self, i: int, j: int) -> None:
        p = self.progs_by_run[self.specs[i].program_id]
        cs = p.spec.calls[j]
        assert cs.tool is not None
        del p.tool_ends[j]
        self.tools.record(cs.tool, cs.tool_latency_s)
        self.emit(ToolFinished(p.run_id, cs.tool, cs.tool_latency_s))
        self._step_done(p, j)

    def _step_done(self, p: _Prog, j: int) -> None:
        for d in p.dependents[j]:
            p.waiting_deps[d] -= 1
            if p.waiting_deps[d] == 0:
                self._arrive(p, d)
        p.steps_left -= 1
        if p.steps_left == 0:
            self._finish_program(p)

    def _finish_program(self, p: _Prog) -> None:
        spec = p.spec
        self.outcomes.append(
            ProgramOutcome(
                spec.program_id,
                spec.tenant,
                spec.arrival_s if spec.open_loop else p.submitted_s,
                self.now,
                p.calls_done,
                p.prompt_tokens,
                p.output_tokens,
                submitted_s=p.submitted_s,
            )
        )
        self.emit(RunFinished(p.run_id, "succeeded"))
        run = self.run_index[p.run_id]
        for e in self.engines:
            if run in e.run_path or run in e.pins:
                self.control.op(e.index, ForgetRun(run))
        self.done += 1
        if self.progress is not None and self.done % self._progress_every == 0:
            self.progress(self.done, len(self.specs))
        self._submit_next(self.now)

    def _prompt_of(self, call_id: str) -> tuple[Segment, ...] | None:
        pending = self.pending.get(call_id)
        return None if pending is None else pending[0].spec.calls[pending[1]].prompt

    # --- decisions ----------------------------------------------------------------------

    def _new_call(self, call_id: str, replica: int, priority: int) -> AddCall:
        """A dispatched call leaves the pending set and becomes a request for `replica`."""
        p, j = self.pending.pop(call_id)
        cs = p.spec.calls[j]
        req = SimRequest(call_id, self.run_index[p.run_id], p.prompt_lens[j], cs.output_tokens, priority)
        self.requests[call_id] = (p, j, req, replica)
        self.dispatched_s[call_id] = self.now
        return AddCall(req, cs.prompt, Segment(cs.output_seg_id, cs.output_tokens))

    def _on_step(self, r: int, version: int) -> None:
        e = self.engines[r]
        if version != e.version or not e.in_flight:
            return
        finished = e.complete(self.now)
        self.control.flush(e)
        for req in finished:
            self._on_call_done(req)
        self._maybe_plan(r)

    def _maybe_plan(self, r: int) -> None:
        e = self.engines[r]
        if e.in_flight:
            return
        end = e.plan(self.now)
        if end is not None:
            self.push(end, _STEP, r, e.version)


def resolve_policy(policy: str | Policy, tenant_weights: Mapping[str, float] | None = None) -> Policy:
    """A policy object from a registry name; policies that take fair-share weights get
    `tenant_weights` (the workload's)."""
    if not isinstance(policy, str):
        return policy
    from legato.scheduler.baselines import POLICIES, build_policy

    try:
        return build_policy(policy, tenant_weights)
    except KeyError:
        raise ValueError(f"unknown policy {policy!r}; valid choices: {', '.join(sorted(POLICIES))}") from None


def simulate(
    workload: Workload,
    policy: str | Policy,
    config: SimConfig,
    *,
    concurrency: int,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    check: bool = False,
    trace: list[CallTrace] | None = None,
    decisions: list[Decision] | None = None,
) -> RunOutcome:
    """Replay `workload` under `policy` (a registry name or a Policy object) on simulated
    replicas. `seed` is the real drivers' (`bench --engine torch` seeds the weights): the
    simulator draws no random numbers, so equal inputs always give equal outcomes. `check`
    turns on the engine's invariant assertions (slow); `trace`, when given, receives one
    `CallTrace` per call, and `decisions` every decision in the order it was applied. A bad
    decision (a policy bug) raises `legato.scheduler.apply.BadDecision`."""
    weights = {p.tenant: p.tenant_weight for p in workload.programs}
    policy = resolve_policy(policy, weights)
    sim = _Sim(workload, policy, config, concurrency, progress, check, trace, decisions)
    return sim.run()


__all__: Sequence[str] = ["CallTrace", "SimConfig", "simulate"]
