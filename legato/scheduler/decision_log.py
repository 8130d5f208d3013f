"""`DecisionLog`: a bounded record of the decisions the applier handed to the replicas, for people.

The operator page (`/ui`) shows what the scheduler did lately and why: admit (dispatch), pause,
resume, pin, unpin, evict hints (next use), prefetch, re-rank. `DecisionApplier` notes every
decision it applies here, with the event the policy was answering (the reason), so the log can
never disagree with what was applied and observing it changes no decision.

It is a ring buffer (`capacity` entries, the oldest dropped) plus, per run, the latest marks a
program table wants (predicted next use, pin TTL), kept for at most `max_runs` runs (least
recently decided dropped first), so memory stays bounded on a server that runs for weeks.
Recording is a deque append and a dict update: cheap enough for every decision.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass

from legato.scheduler.events import (
    CallArrived,
    CallFinished,
    RunFinished,
    RunStarted,
    TenantWeight,
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
    Resume,
    SetPriority,
    Unpin,
)

DEFAULT_CAPACITY = 512
DEFAULT_MAX_RUNS = 20_000


@dataclass(frozen=True, slots=True)
class LoggedDecision:
    """One applied decision as the page shows it."""

    at: float  # wall-clock seconds
    kind: str  # admit, set_priority, pause, resume, pin, unpin, next_use, prefetch
    run_id: str | None  # None only for a dispatch whose call was already gone
    call_id: str | None
    replica: int | None
    detail: str  # the decision's parameters in words
    reason: str  # the event the policy answered with it
    tenant: str | None


@dataclass(slots=True)
class RunMarks:
    """What the latest decisions said about one run."""

    next_use_s: float | None = None  # monotonic deadline of the latest NextUse (inf: never)
    pin_ttl_s: float | None = None  # TTL of the latest Pin, None once unpinned
    paused: bool = False


def describe(decision: Decision) -> tuple[str, str | None, str | None, int | None, str]:
    """(kind, run id, call id, replica, detail) of a decision."""
    d = decision
    if isinstance(d, Dispatch):
        return "admit", None, d.call_id, d.replica, f"priority {d.priority}"
    if isinstance(d, SetPriority):
        return "set_priority", d.run_id, None, None, f"priority {d.priority}"
    if isinstance(d, Pause):
        return "pause", d.run_id, None, None, "evict its KV first" if d.evict else "hold calls only"
    if isinstance(d, Resume):
        return "resume", d.run_id, None, None, ""
    if isinstance(d, Pin):
        return "pin", d.run_id, None, None, f"ttl {d.ttl_s:.1f} s"
    if isinstance(d, Unpin):
        return "unpin", d.run_id, None, None, ""
    if isinstance(d, NextUse):
        return "next_use", d.run_id, None, None, "never" if d.at_s == float("inf") else f"at {d.at_s:.1f}"
    return "prefetch", d.run_id, None, d.replica, ""


def cause_text(event: object) -> str:
    """The event a decision answered, in words (the decision's reason)."""
    if isinstance(event, CallArrived):
        c = event.call
        return f"a call of {c.node!r} arrived ({len(c.prompt_token_ids)} prompt tokens)"
    if isinstance(event, CallFinished):
        return f"call {event.call_id} finished ({event.output_tokens} tokens, {event.finish_reason})"
    if isinstance(event, ToolStarted):
        hint = f", expected {event.expected_latency_s:.1f} s" if event.expected_latency_s else ""
        return f"tool {event.tool!r} started{hint}"
    if isinstance(event, ToolFinished):
        return f"tool {event.tool!r} finished after {event.duration_s:.2f} s"
    if isinstance(event, RunStarted):
        return f"run of {event.program!r} started"
    if isinstance(event, RunFinished):
        return f"run {event.status}"
    if isinstance(event, TenantWeight):
        return f"tenant weight set to {event.weight:g}"
    if isinstance(event, Tick):
        return "periodic tick"
    return type(event).__name__ if event is not None else ""


class DecisionLog:
    """See the module docstring. `owner(call_id)` -> (run id, tenant) of a call being dispatched,
    `tenant_of(run_id)` -> a run's tenant: the driver knows both, the decisions do not carry them."""

    def __init__(
        self,
        owner: Callable[[str], tuple[str | None, str | None]] = lambda _call: (None, None),
        tenant_of: Callable[[str], str | None] = lambda _run: None,
        *,
        capacity: int = DEFAULT_CAPACITY,
        max_runs: int = DEFAULT_MAX_RUNS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.owner = owner
        self.tenant_of = tenant_of
        self.clock = clock
        self.entries: collections.deque[LoggedDecision] = collections.deque(maxlen=capacity)
        self.counts: collections.Counter[str] = collections.Counter()
        self.marks: collections.OrderedDict[str, RunMarks] = collections.OrderedDict()
        self.max_runs = max_runs

    def note(self, decision: Decision, cause: object = None) -> None:
        """Called by the applier for each decision it applies, in order."""
        kind, run_id, call_id, replica, detail = describe(decision)
        tenant: str | None = None
        if call_id is not None:
            run_id, tenant = self.owner(call_id)
        elif run_id is not None:
            tenant = self.tenant_of(run_id)
            self._mark(run_id, decision)
        self.counts[kind] += 1
        reason = cause_text(cause)
        entry = LoggedDecision(self.clock(), kind, run_id, call_id, replica, detail, reason, tenant)
        self.entries.append(entry)

    def _mark(self, run_id: str, d: Decision) -> None:
        marks = self.marks.get(run_id)
        if marks is None:
            marks = self.marks[run_id] = RunMarks()
            if len(self.marks) > self.max_runs:
                self.marks.popitem(last=False)
        else:
            self.marks.move_to_end(run_id)
        if isinstance(d, NextUse):
            marks.next_use_s = d.at_s
        elif isinstance(d, Pin):
            marks.pin_ttl_s = d.ttl_s
        elif isinstance(d, Unpin):
            marks.pin_ttl_s = None
        elif isinstance(d, Pause):
            marks.paused = True
        elif isinstance(d, Resume):
            marks.paused = False

    def forget(self, run_id: str) -> None:
        """The run finished: its marks are no longer needed."""
        self.marks.pop(run_id, None)

    def recent(self, limit: int, tenants: frozenset[str] | None = None) -> list[LoggedDecision]:
        """The latest `limit` entries, newest first; only those of `tenants` when given."""
        out: list[LoggedDecision] = []
        for entry in reversed(self.entries):
            if tenants is not None and entry.tenant not in tenants:
                continue
            out.append(entry)
            if len(out) >= limit:
                break
        return out


__all__ = ["DecisionLog", "LoggedDecision", "RunMarks", "cause_text", "describe"]
