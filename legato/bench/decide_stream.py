"""The synthetic event stream `legato bench decide` times a policy on (see
`legato.bench.decision_bench`): closed-loop runs of 5-30 steps with lognormal tools, a
`FakeCluster` view of counters, and a replica control that applies decisions through the one
decision applier just enough for the stream to stay honest."""

from __future__ import annotations

import heapq
import math
import random
import time
from collections import deque
from dataclasses import dataclass, field

from legato.engine_adapter.base import SamplingParams
from legato.scheduler.apply import DecisionApplier, ReplicaTraits
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
from legato.scheduler.policy import Policy, ReplicaView

BLOCK_SIZE = 16
SYSTEM_TOKENS = 3000  # shared system prompt of every run of a tenant
TENANTS = 4
TOOLS = (("bash", 1.0, 1.0), ("edit", 0.3, 0.5), ("search", 0.6, 0.7), ("test", 8.0, 0.8))
_SAMPLING = SamplingParams(max_tokens=4096)
EVENT_KINDS = (
    "RunStarted",
    "CallArrived",
    "CallFinished",
    "ToolStarted",
    "ToolFinished",
    "RunFinished",
    "Tick",
)


@dataclass(slots=True)
class _Replica:
    total_blocks: int
    max_num_seqs: int
    used_blocks: int = 0
    running: int = 0
    queue: deque[str] = field(default_factory=deque)  # dispatched call ids waiting for a slot


@dataclass(slots=True)
class _Run:
    run_id: str
    tenant: str
    steps: int
    context: int  # tokens of the run's last sequence (prompt + output of its latest call)
    step: int = 0
    replica: int | None = None
    paused: bool = False
    next_use: float = 0.0  # when its next call arrives (`now` while one is live)
    held: list[str] = field(default_factory=list)  # dispatched while paused


@dataclass(slots=True)
class _Call:
    call: LLMCall
    run: _Run
    output: int
    replica: int = -1


class FakeCluster:
    """A cheap `ClusterView`: counters the driver keeps up to date; prefix residency is the
    run's context on the replica that last ran it (optimistic: no evictions)."""

    def __init__(self, replicas: int, total_blocks: int, max_num_seqs: int) -> None:
        self.replicas = [_Replica(total_blocks, max_num_seqs) for _ in range(replicas)]
        self.calls: dict[str, _Call] = {}
        self.runs: dict[str, _Run] = {}

    @property
    def num_replicas(self) -> int:
        return len(self.replicas)

    def replica(self, index: int) -> ReplicaView:
        r = self.replicas[index]
        return ReplicaView(
            replica=index,
            block_size=BLOCK_SIZE,
            total_blocks=r.total_blocks,
            free_blocks=max(0, r.total_blocks - r.used_blocks),
            running=r.running,
            waiting=len(r.queue),
        )

    def cached_prefix_tokens(self, replica: int, call_id: str) -> int:
        c = self.calls.get(call_id)
        if c is None:
            return 0
        if c.run.replica == replica:
            return min(c.run.context, c.call.prompt_len) // BLOCK_SIZE * BLOCK_SIZE
        return SYSTEM_TOKENS // BLOCK_SIZE * BLOCK_SIZE

    def resident_tokens(self, replica: int, run_id: str) -> int:
        run = self.runs.get(run_id)
        if run is None or run.replica != replica:
            return 0
        return run.context // BLOCK_SIZE * BLOCK_SIZE


class _Oracle:
    """`FutureOracle` for clairvoyant policies: the driver knows when every tool ends."""

    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster

    def next_use_s(self, run_id: str, now: float) -> float:
        run = self.cluster.runs.get(run_id)
        return math.inf if run is None else max(now, run.next_use)


class _Control:
    """`ReplicaControl` of the synthetic stream: dispatch, pause and resume change what happens
    next; a running call is never preempted; priorities, pins, hints and prefetches are dropped."""

    traits = ReplicaTraits(can_preempt_running=False, can_rerank_queued=False)

    def __init__(self, driver: EventStream) -> None:
        self._d = driver

    @property
    def num_replicas(self) -> int:
        return self._d.view.num_replicas

    def awaits_dispatch(self, call_id: str) -> bool:
        c = self._d.view.calls.get(call_id)
        return c is not None and c.replica < 0

    def dispatch(self, call_id: str, replica: int, priority: int) -> None:
        self._d.dispatch(call_id, replica)

    def pause(self, run_id: str, evict: bool) -> None:
        run = self._d.view.runs.get(run_id)
        if run is not None:
            run.paused = True

    def resume(self, run_id: str) -> None:
        self._d.resume(run_id)

    def set_priority(self, run_id: str, priority: int) -> None:
        pass

    def pin(self, run_id: str, ttl_s: float) -> None:
        pass

    def unpin(self, run_id: str) -> None:
        pass

    def next_use(self, run_id: str, at_s: float) -> None:
        pass

    def prefetch(self, run_id: str, replica: int) -> None:
        pass


# driver event kinds (heap entries: (time, seq, kind, key))
_ARRIVE, _CALL_DONE, _TOOL_DONE, _TICK = range(4)


class EventStream:
    def __init__(self, policy: Policy, programs: int, replicas: int, seed: int, tick_s: float | None) -> None:
        self.policy = policy
        self.programs = programs
        self.rng = random.Random(seed)
        # KV sized so about half the active programs' contexts fit at once: real pressure
        per_replica = max(64, programs * 6000 // (2 * BLOCK_SIZE * replicas))
        self.view = FakeCluster(replicas, per_replica, max_num_seqs=256)
        self.heap: list[tuple[float, int, int, str]] = []
        self.seq = 0
        self.now = 0.0
        self.started = 0
        self.finished = 0
        self.decisions = 0
        self.tick_s = tick_s
        self.samples: list[int] = []
        self.kinds: list[int] = []
        self.emitted = 0
        self.measuring = False
        self.applier = DecisionApplier(_Control(self))
        if policy.traits.oracle:
            policy.set_oracle(_Oracle(self.view))

    # --- the stream ---------------------------------------------------------------------

    def _push(self, at: float, kind: int, key: str) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (at, self.seq, kind, key))

    def _emit(self, event: Event, kind: int) -> None:
        t0 = time.perf_counter_ns()
        decisions = self.policy.on_event(event, self.now, self.view)
        elapsed = time.perf_counter_ns() - t0
        self.emitted += 1
        if self.measuring:
            self.samples.append(elapsed)
            self.kinds.append(kind)
            self.decisions += len(decisions)
        self.applier.apply(decisions)

    def _start_run(self) -> None:
        self.started += 1
        run_id = f"run-{self.started}"
        tenant = f"tenant-{self.started % TENANTS}"
        task = self.rng.randint(300, 1500)
        run = _Run(run_id, tenant, self.rng.randint(5, 30), SYSTEM_TOKENS + task)
        self.view.runs[run_id] = run
        self._emit(RunStarted(run_id, "swe", tenant), 0)
        self._arrive(run)

    def _arrive(self, run: _Run) -> None:
        run.next_use = self.now
        step = run.step
        tool = None if step == run.steps - 1 else self.rng.choice(TOOLS)
        call = LLMCall(
            call_id=f"{run.run_id}#{step}",
            run_id=run.run_id,
            program="swe",
            node=f"step-{step}",
            tenant=run.tenant,
            prompt_token_ids=(),
            sampling=_SAMPLING,
            shared_prefix_tokens=SYSTEM_TOKENS,
            hints=CallHints(
                None if tool is None else tool[0], None if tool is None else tool[1], tool is None
            ),
            num_prompt_tokens=run.context,
        )
        self.view.calls[call.call_id] = _Call(call, run, self.rng.randint(100, 600))
        self._emit(CallArrived(call), 1)

    def dispatch(self, call_id: str, replica: int) -> None:
        c = self.view.calls[call_id]
        c.replica = replica
        if c.run.paused:
            c.run.held.append(call_id)
            return
        self._enqueue(c)

    def _enqueue(self, c: _Call) -> None:
        r = self.view.replicas[c.replica]
        r.queue.append(c.call.call_id)
        self._admit(c.replica)

    def _admit(self, index: int) -> None:
        r = self.view.replicas[index]
        while r.queue and r.running < r.max_num_seqs:
            c = self.view.calls[r.queue.popleft()]
            r.running += 1
            r.used_blocks += -(-(c.call.prompt_len + c.output) // BLOCK_SIZE)
            self._push(self.now + 0.3 + c.output * 0.015, _CALL_DONE, c.call.call_id)

    def resume(self, run_id: str) -> None:
        run = self.view.runs.get(run_id)
        if run is None or not run.paused:
            return
        run.paused = False
        held, run.held = run.held, []
        for call_id in held:
            c = self.view.calls.get(call_id)
            if c is not None:
                self._enqueue(c)

    def _call_done(self, call_id: str) -> None:
        c = self.view.calls.pop(call_id)
        r = self.view.replicas[c.replica]
        r.running -= 1
        r.used_blocks -= -(-(c.call.prompt_len + c.output) // BLOCK_SIZE)
        run = c.run
        run.replica = c.replica
        run.context = c.call.prompt_len + c.output
        cached = self.view.cached_prefix_tokens(c.replica, call_id)
        self._emit(CallFinished(call_id, run.run_id, c.call.prompt_len, c.output, cached, "length"), 2)
        self._admit(c.replica)
        tool = c.call.hints.next_tool
        if tool is None:
            self._emit(RunFinished(run.run_id, "succeeded"), 5)
            del self.view.runs[run.run_id]
            self.finished += 1
            self._start_run()
            return
        median = next(m for name, m, _ in TOOLS if name == tool)
        sigma = next(s for name, _, s in TOOLS if name == tool)
        latency = min(300.0, median * math.exp(self.rng.gauss(0.0, sigma)))
        run.next_use = self.now + latency
        self._emit(ToolStarted(run.run_id, tool, c.call.hints.expected_tool_latency_s), 3)
        self._push(self.now + latency, _TOOL_DONE, f"{run.run_id}\t{tool}\t{latency}")

    def _tool_done(self, key: str) -> None:
        run_id, tool, latency = key.split("\t")
        run = self.view.runs[run_id]
        run.context += self.rng.randint(200, 3000)
        run.step += 1
        self._emit(ToolFinished(run_id, tool, float(latency)), 4)
        self._arrive(run)

    def run(self, events: int, warmup: int) -> None:
        for _ in range(self.programs):
            self._start_run()
        if self.tick_s is not None:
            self._push(self.tick_s, _TICK, "")
        idle_ticks = 0
        while len(self.samples) < events:
            if not self.measuring and self.emitted >= warmup:
                self.measuring = True
            if not self.heap or idle_ticks > 100_000:
                raise RuntimeError(
                    f"policy {self.policy.name!r} left every call undispatched: the event stream stopped"
                )
            at, _, kind, key = heapq.heappop(self.heap)
            idle_ticks = idle_ticks + 1 if kind == _TICK else 0
            self.now = at
            if kind == _CALL_DONE:
                self._call_done(key)
            elif kind == _TOOL_DONE:
                self._tool_done(key)
            elif kind == _TICK and self.tick_s is not None:
                self._emit(Tick(), 6)
                self._push(self.now + self.tick_s, _TICK, "")


__all__ = ["EVENT_KINDS", "EventStream", "FakeCluster"]
