"""`DecisionLog`, fed by the one decision applier: what was applied, in order, with the event it
answered; bad decisions are not logged; the ring and the per-run marks stay bounded; a
tenant filter shows only that tenant's entries; logging changes nothing that is applied."""

from __future__ import annotations

import math

import pytest

from legato.scheduler.apply import BadDecision, DecisionApplier, ReplicaTraits
from legato.scheduler.decision_log import DecisionLog
from legato.scheduler.events import CallArrived, LLMCall, ToolStarted
from legato.scheduler.policy import Dispatch, NextUse, Pause, Pin, Resume, Unpin
from tests.scheduler.test_apply_parity import _Recorder

OWNERS = {"c1": ("r1", "acme"), "c2": ("r2", "globex")}
TENANTS = {"r1": "acme", "r2": "globex"}


def _log(**kwargs: int) -> DecisionLog:
    return DecisionLog(lambda c: OWNERS.get(c, (None, None)), TENANTS.get, clock=lambda: 100.0, **kwargs)


def test_the_applier_logs_what_it_applied_with_its_reason() -> None:
    log = _log()
    plain, logged = _Recorder(ReplicaTraits(True)), _Recorder(ReplicaTraits(True))
    batch = [Dispatch("c1", 1, 3), Dispatch("nope", 0), Pause("r2"), NextUse("r1", 42.0), Pin("r1", 9.5)]
    for applier in (DecisionApplier(plain), DecisionApplier(logged, journal=log)):
        with pytest.raises(BadDecision):  # the unknown call; the rest of the batch is applied
            applier.apply(batch, CallArrived(LLMCall("c1", "r1", "prog", "plan", "acme", (1, 2, 3))))
    assert plain.calls == logged.calls  # the journal changes nothing that is applied
    kinds = [(e.kind, e.run_id, e.tenant) for e in log.entries]
    assert kinds == [
        ("admit", "r1", "acme"),
        ("pause", "r2", "globex"),
        ("next_use", "r1", "acme"),
        ("pin", "r1", "acme"),
    ]
    first = log.entries[0]
    assert (
        first.replica == 1
        and first.detail == "priority 3"
        and "'plan' arrived (3 prompt tokens)" in first.reason
    )
    assert log.marks["r1"].next_use_s == 42.0 and log.marks["r1"].pin_ttl_s == 9.5
    assert log.marks["r2"].paused
    assert [e.kind for e in log.recent(10, frozenset({"globex"}))] == ["pause"]
    assert [e.kind for e in log.recent(2)] == ["pin", "next_use"]  # newest first


def test_the_log_stays_bounded() -> None:
    log = _log(capacity=5, max_runs=3)
    applier = DecisionApplier(_Recorder(ReplicaTraits(True)), journal=log)
    for i in range(20):
        applier.apply([Pin(f"run{i}", 1.0), Unpin(f"run{i}"), Resume(f"run{i}")], ToolStarted(f"run{i}", "t"))
        applier.apply([NextUse(f"run{i}", math.inf)])
    assert len(log.entries) == 5 and len(log.marks) == 3
    assert log.counts["pin"] == 20 and log.marks["run19"].next_use_s == math.inf
    assert log.entries[-1].detail == "never"
    log.forget("run19")
    assert "run19" not in log.marks
