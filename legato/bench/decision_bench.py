"""`legato bench decide`: what one scheduling decision costs, per policy, at scale.

A policy sits on the path of every LLM call and program event, so its cost per event bounds
how many programs one Legato process can steer. This microbenchmark drives each policy with a
realistic synthetic event stream — `RunStarted`, `CallArrived`, `CallFinished`, `ToolStarted`,
`ToolFinished`, `RunFinished`, `Tick` — while `programs` runs are active at once (a finished
run is replaced by a new one, so the count stays put), and times `policy.on_event` alone.

The stream (`legato.bench.decide_stream`) is closed-loop, like the simulator's, but with no
cost model: a dispatched call starts on its replica when one of `max_num_seqs` slots frees,
runs for a virtual time that grows with its output tokens, then its run's tool runs for a
lognormal time, and so on for 5-30 steps. Decisions go through the one decision applier
(`legato.scheduler.apply`) to a replica control that applies them just enough for the stream
to stay honest (dispatch, pause and resume change what happens next; priorities, pins and
hints are accepted and dropped). The `ClusterView` is `FakeCluster`, a plain class of
counters, so reading it costs about what a real view's cached numbers cost; `oracle-evict`
gets a `FutureOracle` from the driver, which knows when every tool ends.

Times are wall-clock (`time.perf_counter_ns` around each `on_event`), so they vary with the
machine and its load; ratios between policies in one run are what to compare.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from legato.bench.decide_stream import EVENT_KINDS, EventStream, FakeCluster
from legato.scheduler.policy import Policy

TARGET_POLICY = "legato"
TARGET_US = 50.0  # acceptance: mean cost per event of `legato` with 10,000 active programs


class DecideInputError(ValueError):
    """A bad argument of `legato bench decide` (the message says which and what is valid)."""


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
    driver = EventStream(policy, programs, replicas, seed, tick)
    driver.run(events, warmup=3 * programs)
    samples = driver.samples[:events]  # one step of the stream may emit a few events at once
    ordered = sorted(samples)
    sums = [0] * len(EVENT_KINDS)
    counts = [0] * len(EVENT_KINDS)
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
        mean_us_by_kind={name: sums[i] / counts[i] / 1e3 for i, name in enumerate(EVENT_KINDS) if counts[i]},
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
