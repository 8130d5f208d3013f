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
from legato.scheduler.events import (
    CallArrived,
    CallFinished,
    CallHints,
    Event,
    LLMCall,
    RunFinished,
    RunStarted,
    Tick,
    ToolFinished,
    ToolStarted,
)
from legato.scheduler.policy import (
    Decision,
    Dispatch,
    NextUse,
    Pause,
    Pin,
    Policy,
    Prefetch,
    ReplicaView,
    Resume,
    SetPriority,
    TierView,
    Unpin,
)
from legato.sim.cost_model import CostModel
from legato.sim.engine import SimEngine, SimRequest
from legato.sim.hardware import gpu as gpu_preset
from legato.sim.hardware import tier_specs
from legato.sim.kv_pool import UNLIMITED_BLOCKS, KVPool
from legato.sim.models import model as model_preset
from legato.sim.outcome import ProgramOutcome, RunOutcome
from legato.sim.tiers import SimTiers
from legato.sim.workload import ProgramSpec, Segment, Workload

SWAP_SPACE_GB = 4 * 2**30 / 1e9  # vLLM's default --swap-space: 4 GiB per GPU
_BROADCAST = (Pause, Resume, SetPriority, NextUse, Unpin)  # decisions every replica applies
_URGENT = (Pause, Resume)  # decisions that cut a decode jump short (besides new calls)
W_IN, W_OUT = 1.0, 2.0  # VTC cost weights for service_by_tenant
_SAMPLING = SamplingParams(max_tokens=4096)  # the simulator never samples; outputs come from the spec

# event kinds, in tie-break order irrelevant (sequence numbers order equal times)
_SUBMIT, _TOOL_DONE, _STEP, _KICK, _PIN_EXPIRE, _TICK = range(6)


@dataclass(slots=True)
class SimConfig:
    gpu: str = "h100"
    model: str = "llama-3.1-8b"
    replicas: int = 1
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256
    block_size: int = 16
    kv_blocks: int | None = None  # None: from GPU memory (see CostModel.kv_capacity_blocks)
    tiers: tuple[str, ...] = ()  # KV tiers below the device, fastest first: "host[:GB]", "redis[:GB]"
    eff_compute: float = 0.5
    eff_mem: float = 0.8
    overhead_s: float = 1.5e-3

    def cost_model(self) -> CostModel:
        return CostModel(
            model_preset(self.model),
            gpu_preset(self.gpu),
            eff_compute=self.eff_compute,
            eff_mem=self.eff_mem,
            overhead_s=self.overhead_s,
        )


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
    started: bool = False  # a call of it has finished (it got through any queue)


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


class _View:
    """ClusterView over the simulated replicas."""

    def __init__(self, sim: _Sim) -> None:
        self._sim = sim

    @property
    def num_replicas(self) -> int:
        return len(self._sim.engines)

    def replica(self, index: int) -> ReplicaView:
        e = self._sim.engines[index]
        pool = e.pool
        facts = self._sim.facts
        tiers: tuple[TierView, ...] = ()
        if pool.tiers is not None:
            tiers = tuple(
                TierView(
                    lv.spec.name,
                    lv.spec.bandwidth,
                    lv.spec.round_trip_s,
                    lv.capacity * pool.tiers.block_bytes,
                    max(0, lv.capacity - lv.used) * pool.tiers.block_bytes,
                )
                for lv in pool.tiers.levels
            )
        return ReplicaView(
            replica=index,
            block_size=pool.block_size,
            total_blocks=pool.capacity,
            free_blocks=pool.available,
            running=e.running,
            waiting=e.n_waiting + e.n_parked,
            prefill_s_per_token=facts[0],
            prefill_s_per_pair=facts[1],
            decode_step_s=facts[2],
            decode_s_per_ctx_token=facts[3],
            kv_bytes_per_token=facts[4],
            tiers=tiers,
        )

    def cached_prefix_tokens(self, replica: int, call_id: str) -> int:
        pending = self._sim.pending.get(call_id)
        if pending is None:
            return 0
        p, j = pending
        return self._sim.engines[replica].pool.match_tokens(p.spec.calls[j].prompt)

    def resident_tokens(self, replica: int, run_id: str) -> int:
        run = self._sim.run_index.get(run_id)
        if run is None:
            return 0
        return self._sim.engines[replica].resident_tokens(run)


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
        self.engines = [
            SimEngine(
                i,
                cost,
                KVPool(blocks, config.block_size, policy.traits.eviction),
                max_num_batched_tokens=config.max_num_batched_tokens,
                max_num_seqs=config.max_num_seqs,
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
        order = sorted(range(len(workload.programs)), key=lambda i: (workload.programs[i].arrival_s, i))
        self.specs = [workload.programs[i] for i in order]
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
        self.pending_ops: list[list[Decision]] = [[] for _ in self.engines]
        self.kicked = [False] * len(self.engines)
        self.outcomes: list[ProgramOutcome] = []
        self.service: dict[str, float] = {}
        self.weights: dict[str, float] = {}
        # The backlogged window: from the start until some tenant has no program left that
        # has not started (finished a call: got through the policy's and the engine's queues).
        # Service finished inside it is what weighted fair sharing promises in proportion to
        # weights; whole-run totals are just the workload's.
        self.unstarted: dict[str, int] = {}
        for spec in self.specs:
            self.unstarted[spec.tenant] = self.unstarted.get(spec.tenant, 0) + 1
        self.backlog_open = bool(self.specs)
        self.backlog_end_s = 0.0
        self.backlog_service: dict[str, float] = {t: 0.0 for t in sorted(self.unstarted)}
        self.tool_stats: dict[str, tuple[float, int]] = {}
        self.shared_first: set[int] = self._shared_first_segments()
        self.pauses = 0
        self.prefetches = 0
        self.next_prog = 0
        self.done = 0
        # Engine facts every ReplicaView carries (see `CostModel.engine_facts`).
        self.facts = cost.engine_facts()
        self.view = _View(self)
        self._pin_home: dict[int, int] = {}  # run -> replica holding its pin
        self._progress_every = max(1, len(self.specs) // 100)

    def _shared_first_segments(self) -> set[int]:
        seen: dict[int, int] = {}
        for p in self.workload.programs:
            if p.calls and p.calls[0].prompt:
                sid = p.calls[0].prompt[0].seg_id
                seen[sid] = seen.get(sid, 0) + 1
        return {s for s, c in seen.items() if c > 1}

    # --- event plumbing ------------------------------------------------------------------

    def push(self, t: float, kind: int, a: int = 0, b: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, a, b))

    def emit(self, event: Event) -> None:
        for d in self.policy.on_event(event, self.now, self.view):
            self.apply(d)

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
                self.kicked[a] = False
                self._maybe_plan(a)
            elif kind == _PIN_EXPIRE:
                self._replica_op(self._pin_home.get(a, 0), ("expire", a, b))
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
        return self._outcome()

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
        p.dependents = [[] for _ in range(n)]
        for j, c in enumerate(spec.calls):
            for dep in c.deps:
                p.dependents[dep].append(j)
        self.progs_by_run[p.run_id] = p
        self.run_index[p.run_id] = i
        self.weights[spec.tenant] = spec.tenant_weight
        self.service.setdefault(spec.tenant, 0.0)
        self.emit(RunStarted(p.run_id, spec.kind or "program", spec.tenant, group=spec.group))
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
        shared = prompt[0].tokens if prompt and prompt[0].seg_id in self.shared_first else 0
        expected = None
        if cs.tool is not None:
            st = self.tool_stats.get(cs.tool)
            if st is not None:
                expected = st[0] / st[1]
        hints = CallHints(cs.tool, expected, not p.dependents[j])
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
        tenant = p.spec.tenant
        self.service[tenant] += W_IN * prompt + W_OUT * cs.output_tokens
        if self.backlog_open:
            self.backlog_service[tenant] += W_IN * prompt + W_OUT * cs.output_tokens
            if not p.started:
                p.started = True
                self.unstarted[tenant] -= 1
                if self.unstarted[tenant] == 0:
                    self.backlog_open = False
                    self.backlog_end_s = self.now
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
            self.emit(ToolStarted(p.run_id, cs.tool, self._tool_mean(cs.tool)))
            self.push(self.now + cs.tool_latency_s, _TOOL_DONE, p.index, j)
        else:
            del p.tool_ends[j]
            self._step_done(p, j)

    def _tool_mean(self, tool: str) -> float | None:
        st = self.tool_stats.get(tool)
        return None if st is None else st[0] / st[1]

    def _on_tool_done(self, i: int, j: int) -> None:
        p = self.progs_by_run[self.specs[i].program_id]
        cs = p.spec.calls[j]
        assert cs.tool is not None
        del p.tool_ends[j]
        s, c = self.tool_stats.get(cs.tool, (0.0, 0))
        self.tool_stats[cs.tool] = (s + cs.tool_latency_s, c + 1)
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
                self._replica_op(e.index, ("forget", run, 0))
        self.done += 1
        if self.progress is not None and self.done % self._progress_every == 0:
            self.progress(self.done, len(self.specs))
        self._submit_next(self.now)

    # --- decisions -----------------------------------------------------------------------

    def apply(self, d: Decision) -> None:
        if isinstance(d, Dispatch):
            pending = self.pending.pop(d.call_id, None)
            if pending is None:
                raise ValueError(f"policy dispatched unknown or already dispatched call {d.call_id!r}")
            if not 0 <= d.replica < len(self.engines):
                raise ValueError(
                    f"policy dispatched {d.call_id!r} to replica {d.replica} (have {len(self.engines)})"
                )
            p, j = pending
            cs = p.spec.calls[j]
            req = SimRequest(
                d.call_id, self.run_index[p.run_id], p.prompt_lens[j], cs.output_tokens, d.priority
            )
            self.requests[d.call_id] = (p, j, req, d.replica)
            self.dispatched_s[d.call_id] = self.now
            self._replica_op(d.replica, ("add", req, Segment(cs.output_seg_id, cs.output_tokens), cs.prompt))
        elif isinstance(d, _BROADCAST):
            if isinstance(d, Pause):
                self.pauses += 1  # the one count of program pauses (RunOutcome.pauses)
                if not d.evict:
                    return  # a router-level pause: the policy holds the calls, engines are not told
            for e in self.engines:
                self._replica_op(e.index, d)
        elif isinstance(d, Pin):
            home = self._home_of(d.run_id)
            if home is not None:
                self._replica_op(home, d)
        elif isinstance(d, Prefetch):
            self.prefetches += 1
            run = self.run_index.get(d.run_id)
            if run is not None and 0 <= d.replica < len(self.engines) and self.tier_specs:
                self._replica_op(d.replica, ("prefetch", run, 0))
        else:
            raise TypeError(f"unknown decision {d!r}")

    def _home_of(self, run_id: str) -> int | None:
        run = self.run_index.get(run_id)
        if run is None:
            return None
        for e in self.engines:
            if run in e.run_path:
                return e.index
        return None

    def _replica_op(self, r: int, op: object) -> None:
        """Apply an op now if the replica is between steps, else at its next step boundary.
        Ops that change what the scheduler may run (a new call, pause, resume) also cut a
        decode jump short, so they take effect one step later, as in a real engine; ops that
        only change bookkeeping (hints, pins, priorities of queued calls) wait for the jump."""
        e = self.engines[r]
        if e.in_flight:
            self.pending_ops[r].append(op)  # type: ignore[arg-type]
            if isinstance(op, _URGENT) or (isinstance(op, tuple) and op[0] == "add"):
                new_end = e.truncate(self.now)
                if new_end is not None:
                    self.push(new_end, _STEP, r, e.version)
            return
        self._do_op(e, op)
        if not self.kicked[r]:
            self.kicked[r] = True
            self.push(self.now, _KICK, r)

    def _do_op(self, e: SimEngine, op: object) -> None:
        now = self.now
        if isinstance(op, tuple):
            if op[0] == "add":
                _, req, out_seg, prompt = op
                e.add(req, prompt, out_seg)
            elif op[0] == "expire":
                e.unpin(op[1], op[2], now)
            elif op[0] == "forget":
                e.forget_run(op[1], now)
            elif op[0] == "prefetch":
                e.prefetch(op[1], now)
            return
        if isinstance(op, Pause):
            e.pause(self.run_index[op.run_id], now)
        elif isinstance(op, Resume):
            e.resume(self.run_index[op.run_id])
        elif isinstance(op, SetPriority):
            e.set_priority(self.run_index[op.run_id], op.priority)
        elif isinstance(op, NextUse):
            run = self.run_index.get(op.run_id)
            if run is not None:
                e.set_hint(run, op.at_s)
        elif isinstance(op, Unpin):
            run = self.run_index.get(op.run_id)
            if run is not None:
                e.unpin(run, now=now)
        elif isinstance(op, Pin):
            run = self.run_index[op.run_id]
            version = e.pin(run)
            if version is not None:
                self._pin_home[run] = e.index
                self.push(now + max(0.0, op.ttl_s), _PIN_EXPIRE, run, version)

    def _on_step(self, r: int, version: int) -> None:
        e = self.engines[r]
        if version != e.version or not e.in_flight:
            return
        finished = e.complete(self.now)
        ops, self.pending_ops[r] = self.pending_ops[r], []
        for op in ops:
            self._do_op(e, op)
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

    def _outcome(self) -> RunOutcome:
        stats = [e.stats for e in self.engines]
        outcomes = sorted(self.outcomes, key=lambda o: o.program_id)
        first = min((o.arrival_s for o in outcomes), default=0.0)
        last = max((o.finish_s for o in outcomes), default=0.0)
        evicted = sum(e.pool.evicted_blocks for e in self.engines)
        return RunOutcome(
            policy=self.policy.name,
            programs=outcomes,
            makespan_s=last - first,
            prompt_tokens=sum(o.prompt_tokens for o in outcomes),
            prefill_tokens_computed=sum(s.prefill_tokens for s in stats),
            cached_prompt_tokens=sum(s.cached_prompt_tokens for s in stats),
            preemptions=sum(s.preemptions for s in stats),
            pauses=self.pauses,
            replicas=len(self.engines),
            engine_busy_s=sum(s.busy_s for s in stats),
            service_by_tenant=dict(sorted(self.service.items())),
            tenant_weights=dict(sorted(self.weights.items())),
            backlog_service_by_tenant=self.backlog_service,
            backlog_window_s=max(0.0, self.backlog_end_s - first),
            extra={
                "engine_steps": float(sum(s.steps for s in stats)),
                "evicted_blocks": float(evicted),
                "pin_yields": float(sum(s.pin_yields for s in stats)),
                "prefetches_ignored": float(0 if self.tier_specs else self.prefetches),
                **self._tier_extra(),
                **self._policy_extra(),
            },
        )

    def _policy_extra(self) -> dict[str, float]:
        """Numbers a policy reports about itself (e.g. reuse-predictor accuracy), when it has a
        `stats() -> dict[str, float]` method."""
        stats = getattr(self.policy, "stats", None)
        return {str(k): float(v) for k, v in stats().items()} if callable(stats) else {}

    def _tier_extra(self) -> dict[str, float]:
        """Per-tier traffic summed over replicas (only with tiers): `tier_<name>_<counter>`."""
        if not self.tier_specs:
            return {}
        out: dict[str, float] = {"prefetches": float(self.prefetches)}
        out["tier_load_stall_s"] = sum(e.stats.load_stall_s for e in self.engines)
        for spec in self.tier_specs:
            block_bytes = self.config.block_size * self.config.cost_model().model.kv_bytes_per_token
            totals = {"offloaded_bytes": 0.0, "loaded_bytes": 0.0, "hit_tokens": 0.0, "prefetched_bytes": 0.0}
            totals["capacity_blocks"] = totals["peak_blocks"] = 0.0
            for e in self.engines:
                if e.pool.tiers is None:
                    continue
                st = next(lv for lv in e.pool.tiers.levels if lv.spec.name == spec.name)
                totals["offloaded_bytes"] += st.stats.offloaded_blocks * block_bytes
                totals["loaded_bytes"] += st.stats.loaded_blocks * block_bytes
                totals["prefetched_bytes"] += st.stats.prefetched_blocks * block_bytes
                totals["hit_tokens"] += st.stats.hit_tokens
                totals["write_busy_s"] = totals.get("write_busy_s", 0.0) + st.stats.write_busy_s
                totals["read_busy_s"] = totals.get("read_busy_s", 0.0) + st.stats.read_busy_s
                totals["capacity_blocks"] += st.capacity
                totals["peak_blocks"] = max(totals["peak_blocks"], float(st.stats.peak_blocks))
            out.update({f"tier_{spec.name}_{k}": v for k, v in totals.items()})
        return out


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
) -> RunOutcome:
    """Replay `workload` under `policy` (a registry name or a Policy object) on simulated
    replicas. `seed` is accepted for interface symmetry with real drivers: the simulator draws
    no random numbers, so equal inputs always give equal outcomes. `check` turns on the engine's
    invariant assertions (slow); `trace`, when given, receives one `CallTrace` per call."""
    del seed
    weights = {p.tenant: p.tenant_weight for p in workload.programs}
    sim = _Sim(workload, resolve_policy(policy, weights), config, concurrency, progress, check, trace)
    return sim.run()


__all__: Sequence[str] = ["CallTrace", "SimConfig", "simulate"]
