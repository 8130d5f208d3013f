"""The programs panel: every live program, declarative runs and proxy programs alike, in one table.

A row joins what each part knows about one program: the run manager (declarative runs: status,
program name) or the proxy's tracker (proxy programs: calls, the step running between calls),
the scheduler (paused, held calls, calls in an engine, the replica its KV is on, a pin), the
decision log (the predicted next use the policy last hinted) and the metering scheduler
(attained service: prompt + output tokens served so far).

States, in the order the table sorts them: `running` (a call producing tokens), `waiting` (a
call queued in an engine), `queued` (a call the policy has not admitted), `paused`, `waiting for
client tool` (a declarative run's client-side tool), `tool <name>` / `waiting for client` (a
proxy program between calls), `between calls`, `parked` (between calls, its KV no longer on the
device: offloaded to a tier if the replica has one, else evicted). Resident KV is read only for
the rows returned (an engine hash lookup per block), which keeps the endpoint fast with
thousands of programs.
"""

from __future__ import annotations

import collections
import math
import time
from dataclasses import dataclass
from typing import Any

from legato.engine_adapter.base import Capability
from legato.server.programs_tracker import CLIENT_STEP
from legato.server.state import ServerState
from legato.server.ui.viewer import Viewer

ORDER = ("running", "waiting", "queued", "paused", "waiting for client tool")


@dataclass(slots=True)
class ProgramRow:
    id: str  # the run id (a run page's address)
    kind: str  # run (declarative, REST) or proxy (OpenAI-compatible agent)
    name: str  # program name (run) or the client's program_id (proxy)
    tenant: str
    state: str
    replica: int | None
    resident_tokens: int | None
    next_use_in_s: float | None  # seconds until the policy's predicted next use (None: no hint)
    never_reused: bool  # the policy's hint: this KV is not needed again
    attained_tokens: int
    age_s: float
    calls: int | None
    pinned: bool


def _run_step(live: Any) -> str:
    """What a declarative run does between calls, from its latest events (a tool, or nothing)."""
    recent = live.recent
    for k in range(1, min(8, len(recent)) + 1):
        event = recent[-k]
        if event.kind == "tool_started":
            return f"tool {event.data.get('tool', event.node)}"
        if event.kind in ("tool_output", "node_finished", "node_started"):
            break
    return "between calls"


def _rank(state: str) -> int:
    return ORDER.index(state) if state in ORDER else len(ORDER)


def _sched_state(
    sched: Any, run_id: str, held: collections.Counter[str]
) -> tuple[str | None, int | None, bool]:
    """(state the scheduler knows, replica of its KV, pinned) of a run."""
    runs = getattr(sched, "runs", None)
    run = runs.get(run_id) if isinstance(runs, dict) else None
    in_flight = getattr(sched, "in_flight", None)
    if run is None:
        if isinstance(in_flight, collections.Counter) and in_flight.get(run_id):
            return "running", 0, False  # passthrough: one engine
        return None, None, False
    pinned = getattr(run, "pin", None) is not None
    replica = getattr(run, "replica", None)
    if getattr(run, "paused", False):
        return "paused", replica, pinned
    if held.get(run_id):
        return "queued", replica, pinned
    in_engine = getattr(run, "in_engine", 0)
    if in_engine:
        return ("waiting" if len(getattr(run, "queued", ())) >= in_engine else "running"), replica, pinned
    if isinstance(in_flight, collections.Counter) and in_flight.get(run_id):
        return "running", 0, pinned
    return None, replica, pinned


def _resident(state: ServerState, row: ProgramRow) -> int | None:
    """Leading tokens of the run's last sequence on its replica's device (torch engines)."""
    sched = state.inner_scheduler
    runs = getattr(sched, "runs", None)
    run = runs.get(row.id) if isinstance(runs, dict) else None
    seq = getattr(run, "last_seq", None)
    if run is None or not seq or row.replica is None or row.replica >= len(state.replicas):
        return None
    engine = state.replicas[row.replica]
    if Capability.PREFIX_SNAPSHOT not in engine.capabilities:
        return None
    salt = sched.cache_salt(run.tenant)
    return int(engine.resident_prefix_tokens(seq, salt))  # type: ignore[attr-defined]


def program_rows(
    state: ServerState, viewer: Viewer, names: dict[str, str], limit: int
) -> tuple[list[ProgramRow], dict[str, int], int]:
    """(the first `limit` rows in table order, count per state, total) visible to `viewer`."""
    sched = state.inner_scheduler
    pending = getattr(sched, "pending", None)
    held: collections.Counter[str] = collections.Counter()
    if isinstance(pending, dict):
        for p in pending.values():
            if p.replica is None or p.held:
                held[p.call.run_id] += 1
    log = getattr(sched, "decision_log", None)
    marks = log.marks if log is not None else {}
    clock = getattr(sched, "clock", time.monotonic)
    now_mono, now_wall = clock(), time.time()
    served: dict[str, int] = getattr(state.scheduler, "served", {})
    rows: list[ProgramRow] = []

    def add(run_id: str, kind: str, name: str, tenant: str, idle: str, age: float, calls: int | None) -> None:
        known, replica, pinned = _sched_state(sched, run_id, held)
        mark = marks.get(run_id)
        at = mark.next_use_s if mark is not None else None
        never = at == math.inf
        next_use = None if at is None or never else at - now_mono
        rows.append(
            ProgramRow(
                run_id, kind, name, names.get(tenant, tenant), known or idle, replica, None,
                next_use, never, served.get(run_id, 0), age, calls, pinned,
            )
        )  # fmt: skip

    for live in list(state.runs.live.values()):
        rec = live.record
        if not viewer.sees(rec.tenant_id):
            continue
        idle = "waiting for client tool" if rec.status == "waiting_for_tool" else _run_step(live)
        if rec.status == "pending":
            idle = "pending"
        add(rec.id, "run", rec.program_name or rec.program_id or "inline", rec.tenant_id, idle,
            now_wall - rec.created_at, None)  # fmt: skip
    proxy = state.extras.get("proxy")
    tracker = getattr(proxy, "tracker", None)
    if tracker is not None:
        t_now = tracker.clock()
        for p in list(tracker.programs.values()):
            if not viewer.sees(p.tenant):
                continue
            if p.in_flight:
                idle = "running"
            elif p.tool is None or p.tool == CLIENT_STEP:
                idle = "waiting for client"
            else:
                idle = f"tool {p.tool}"
            add(p.run_id, "proxy", p.program_id, p.tenant, idle, t_now - p.started_at, p.calls)
    counts = collections.Counter(r.state for r in rows)
    rows.sort(key=lambda r: (_rank(r.state), -r.age_s))
    shown = rows[:limit]
    tiers = {i for i, e in enumerate(state.replicas) if getattr(getattr(e, "core", None), "tiers", None)}
    for row in shown:
        row.resident_tokens = _resident(state, row)
        if row.resident_tokens == 0 and _rank(row.state) == len(ORDER) and not row.state.startswith("pend"):
            counts[row.state] -= 1
            row.state = "parked in tier" if row.replica in tiers else "parked (evicted)"
            counts[row.state] += 1
    return shown, {k: v for k, v in counts.items() if v > 0}, len(rows)


__all__ = ["ProgramRow", "program_rows"]
