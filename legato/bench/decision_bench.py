"""`legato bench decide`: what one scheduling decision costs, per policy, at scale.

A policy sits on the path of every LLM call and program event, so its cost per event bounds
how many programs one Legato process can steer. This microbenchmark drives each policy with a
realistic synthetic event stream — `RunStarted`, `CallArrived`, `CallFinished`, `ToolStarted`,
`ToolFinished`, `RunFinished`, `Tick` — while `programs` runs are active at once (a finished
run is replaced by a new one, so the count stays put), and times `policy.on_event` alone.

The stream is closed-loop, like the simulator's, but with no cost model: a dispatched call
starts on its replica when one of `max_num_seqs` slots frees, runs for a virtual time that
grows with its output tokens, then its run's tool runs for a lognormal time, and so on for
5-30 steps. Decisions are applied just enough for the stream to stay honest (dispatch, pause
and resume change what happens next; priorities, pins and hints are only counted). The
`ClusterView` is `FakeCluster`, a plain class of counters, so reading it costs about what a
real view's cached numbers cost; `oracle-evict` gets a `FutureOracle` from the driver, which knows
when every tool ends.

Times are wall-clock (`time.perf_counter_ns` around each `on_event`), so they vary with the
machine and its load; ratios between policies in one run are what to compare.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from legato.scheduler.policy import Dispatch, Pause, Policy, ReplicaView, Resume

TARGET_POLICY = "legato"
TARGET_US = 50.0  # acceptance: mean cost per event of `legato` with 10,000 active programs
BLOCK_SIZE = 16
SYSTEM_TOKENS = 3000  # shared system prompt of every run of a tenant
TENANTS = 4
TOOLS = (("bash", 1.0, 1.0), ("edit", 0.3, 0.5), ("search", 0.6, 0.7), ("test", 8.0, 0.8))
_SAMPLING = SamplingParams(max_tokens=4096)
_EVENT_KINDS = (
    "RunStarted",
    "CallArrived",
    "CallFinished",
    "ToolStarted",
    "ToolFinished",
    "RunFinished",
    "Tick",
)


class DecideInputError(ValueError):
    """A bad argument of `legato bench decide` (the message says which and what is valid)."""


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


@dataclass(frozen=True, slots=True)
class DecideResult:
    """One policy's cost per event (microseconds) and what the stream did."""

    policy: str
    events: int
    mean_us: float
    p50_us: float
    p99_us: float
    max_us: float
    decisions_per_event: float
    mean_us_by_kind: dict[str, float]
    active_programs: int
    finished_programs: int


# driver event kinds (heap entries: (time, seq, kind, key))
_ARRIVE, _CALL_DONE, _TOOL_DONE, _TICK = range(4)


class _Driver:
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
        for d in decisions:
            if isinstance(d, Dispatch):
                self._dispatch(d)
            elif isinstance(d, Pause):
                run = self.view.runs.get(d.run_id)
                if run is not None:
                    run.paused = True
            elif isinstance(d, Resume):
                self._resume(d.run_id)

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

    def _dispatch(self, d: Dispatch) -> None:
        c = self.view.calls.get(d.call_id)
        if c is None or c.replica >= 0 or not 0 <= d.replica < self.view.num_replicas:
            return
        c.replica = d.replica
        if c.run.paused:
            c.run.held.append(d.call_id)
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

    def _resume(self, run_id: str) -> None:
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


def _percentile(ordered: Sequence[int], q: float) -> float:
    if not ordered:
        return 0.0
    k = min(len(ordered) - 1, max(0, math.ceil(q / 100.0 * len(ordered)) - 1))
    return float(ordered[k])


def measure_policy(
    policy: Policy, *, programs: int, events: int, replicas: int = 8, seed: int = 0
) -> DecideResult:
    """Drive `policy` with `programs` active runs until `events` events have been timed (after a
    warm-up in which every run has started and the stream has settled)."""
    tick = policy.traits.tick_s
    driver = _Driver(policy, programs, replicas, seed, tick)
    driver.run(events, warmup=3 * programs)
    samples = driver.samples[:events]  # one step of the stream may emit a few events at once
    ordered = sorted(samples)
    sums = [0] * len(_EVENT_KINDS)
    counts = [0] * len(_EVENT_KINDS)
    for ns, kind in zip(samples, driver.kinds[:events], strict=True):
        sums[kind] += ns
        counts[kind] += 1
    n = len(samples)
    return DecideResult(
        policy=policy.name,
        events=n,
        mean_us=sum(samples) / n / 1e3 if n else 0.0,
        p50_us=_percentile(ordered, 50.0) / 1e3,
        p99_us=_percentile(ordered, 99.0) / 1e3,
        max_us=float(ordered[-1]) / 1e3 if ordered else 0.0,
        decisions_per_event=driver.decisions / n if n else 0.0,
        mean_us_by_kind={name: sums[i] / counts[i] / 1e3 for i, name in enumerate(_EVENT_KINDS) if counts[i]},
        active_programs=len(driver.view.runs),
        finished_programs=driver.finished,
    )


def run_decide(
    policies: Sequence[str],
    *,
    programs: int,
    events: int,
    replicas: int = 8,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure every named policy on the same stream settings; returns the report document."""
    from legato.scheduler.baselines import POLICIES

    if not policies:
        raise DecideInputError(f"give at least one policy; valid: {', '.join(POLICIES)}")
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise DecideInputError(f"unknown policy {', '.join(unknown)}; valid: {', '.join(POLICIES)}")
    for name, value in (("programs", programs), ("events", events), ("replicas", replicas)):
        if value < 1:
            raise DecideInputError(f"--{name} must be >= 1, got {value}")
    results: dict[str, dict[str, Any]] = {}
    for name in policies:
        if progress is not None:
            progress(name)
        r = measure_policy(POLICIES[name](), programs=programs, events=events, replicas=replicas, seed=seed)
        results[name] = {
            "events": r.events,
            "mean_us": round(r.mean_us, 3),
            "p50_us": round(r.p50_us, 3),
            "p99_us": round(r.p99_us, 3),
            "max_us": round(r.max_us, 3),
            "decisions_per_event": round(r.decisions_per_event, 4),
            "mean_us_by_kind": {k: round(v, 3) for k, v in r.mean_us_by_kind.items()},
            "active_programs": r.active_programs,
            "finished_programs": r.finished_programs,
        }
    report: dict[str, Any] = {
        "programs": programs,
        "events": events,
        "replicas": replicas,
        "seed": seed,
        "target": {"policy": TARGET_POLICY, "mean_us_below": TARGET_US, "programs": 10_000},
        "policies": results,
    }
    if TARGET_POLICY in results:
        report["target"]["mean_us"] = results[TARGET_POLICY]["mean_us"]
        report["target"]["pass"] = results[TARGET_POLICY]["mean_us"] < TARGET_US
    return report


def render_decide_table(report: dict[str, Any]) -> Any:
    """The rich table of a `run_decide` report."""
    from rich.table import Table

    table = Table(
        title=f"decision cost · {report['programs']} active programs · {report['replicas']} replicas · "
        f"{report['events']} timed events per policy"
    )
    for header in (
        "policy",
        "mean µs",
        "p50 µs",
        "p99 µs",
        "max µs",
        "decisions/event",
        "slowest event kind",
    ):
        table.add_column(header, justify="left" if header in ("policy", "slowest event kind") else "right")
    for name, r in report["policies"].items():
        by_kind: dict[str, float] = r["mean_us_by_kind"]
        slowest = max(by_kind, key=lambda k: by_kind[k]) if by_kind else ""
        table.add_row(
            name,
            f"{r['mean_us']:.1f}",
            f"{r['p50_us']:.1f}",
            f"{r['p99_us']:.1f}",
            f"{r['max_us']:.0f}",
            f"{r['decisions_per_event']:.2f}",
            f"{slowest} ({by_kind[slowest]:.1f} µs)" if slowest else "",
        )
    return table


def verdict(report: dict[str, Any]) -> str:
    """The PASS / FAIL line against the acceptance target (or why there is none)."""
    target = report["target"]
    if "pass" not in target:
        return (
            f"target: {TARGET_POLICY} < {TARGET_US:.0f} µs/event: not measured "
            f"({TARGET_POLICY} not in --policies)"
        )
    word = "PASS" if target["pass"] else "FAIL"
    note = (
        ""
        if report["programs"] >= 10_000
        else f" (measured with {report['programs']} programs, target is at 10,000)"
    )
    return f"{word}: {TARGET_POLICY} mean {target['mean_us']:.1f} µs/event, target < {TARGET_US:.0f}{note}"


__all__ = [
    "DecideInputError",
    "DecideResult",
    "FakeCluster",
    "main",
    "measure_policy",
    "render_decide_table",
    "run_decide",
    "verdict",
]


def main(
    policies: str,
    *,
    programs: int,
    events: int,
    replicas: int = 8,
    seed: int = 0,
    json_out: Path | None = None,
) -> None:
    """`legato bench decide`: measure, print the table and the verdict, write the JSON."""
    import json

    import typer
    from rich.console import Console

    from legato.scheduler.baselines import POLICIES

    names = [p.strip() for p in policies.split(",") if p.strip()] or list(POLICIES)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    err = Console(stderr=True)
    try:
        with err.status("timing policies...") as status:

            def progress(name: str) -> None:
                status.update(f"timing {name}: {programs} active programs, {events} events")

            report = run_decide(
                names, programs=programs, events=events, replicas=replicas, seed=seed, progress=progress
            )
    except DecideInputError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    console.print(render_decide_table(report))
    console.print(verdict(report))
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        console.print(f"wrote {json_out}")
