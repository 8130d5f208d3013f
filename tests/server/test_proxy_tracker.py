"""`ProgramTracker` alone: the program events it derives from a sequence of proxied calls
(recording scheduler, injected clock)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from legato.engine_adapter.base import TokenChunk, Tokenizer
from legato.engine_adapter.torch.tokenizer import ByteTokenizer
from legato.scheduler.events import (
    CallHints,
    LLMCall,
    ProgramEvent,
    RunFinished,
    RunStarted,
    ToolFinished,
    ToolStarted,
)
from legato.server.programs_tracker import CLIENT_STEP, ProgramTracker, TooManyPrograms


class Recorder:
    """A CallScheduler that only records program events."""

    def __init__(self) -> None:
        self.events: list[ProgramEvent] = []

    @property
    def tokenizer(self) -> Tokenizer:
        return ByteTokenizer()

    async def generate(self, call: LLMCall) -> AsyncIterator[TokenChunk]:
        yield TokenChunk((), finished=True)

    def notify(self, event: ProgramEvent) -> None:
        self.events.append(event)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_turns_become_run_tool_and_finish_events(rec: Recorder, clock: Clock) -> None:
    finished: list[tuple[str, str, float]] = []
    tracker = ProgramTracker(
        rec, clock=clock, on_finish=lambda p, status, why, s: finished.append((status, why, s))
    )
    p = tracker.begin_call("acme", "agent")
    run = p.run_id
    clock.now += 1
    tracker.end_call(p, CallHints(next_tool="pytest", expected_tool_latency_s=2.0), ok=True)
    clock.now += 2.5
    assert tracker.begin_call("acme", "agent") is p
    clock.now += 1
    tracker.end_call(p, CallHints(), ok=True)  # no hint: the client's own step
    clock.now += 0.5
    tracker.begin_call("acme", "agent")
    clock.now += 1
    tracker.end_call(p, CallHints(is_last_step=True), ok=True)
    assert rec.events == [
        RunStarted(run, "agent", "acme"),
        ToolStarted(run, "pytest", 2.0),
        ToolFinished(run, "pytest", 2.5),
        ToolStarted(run, CLIENT_STEP, None),
        ToolFinished(run, CLIENT_STEP, 0.5),
        RunFinished(run, "succeeded"),
    ]
    assert finished == [("succeeded", "last_step", 6.0)]
    assert not tracker.programs and p.calls == 3


def test_program_ids_are_namespaced_by_tenant_and_reuse_starts_a_new_run(rec: Recorder) -> None:
    tracker = ProgramTracker(rec)
    a = tracker.begin_call("acme", "p1")
    b = tracker.begin_call("globex", "p1")
    assert a.run_id != b.run_id
    assert tracker.release("globex", "p1") is b and tracker.release("globex", "p1") is None
    assert ("acme", "p1") in tracker.programs
    tracker.end_call(a, CallHints(), ok=True)
    tracker.release("acme", "p1")
    again = tracker.begin_call("acme", "p1")
    assert again.run_id not in (a.run_id, b.run_id)


def test_parallel_calls_and_release_while_a_call_runs(rec: Recorder) -> None:
    tracker = ProgramTracker(rec)
    p = tracker.begin_call("acme", "fan")
    tracker.begin_call("acme", "fan")
    tracker.end_call(p, CallHints(next_tool="search"), ok=True)  # the sibling still runs: no tool yet
    assert not any(isinstance(e, ToolStarted) for e in rec.events)
    tracker.release("acme", "fan")
    tracker.end_call(p, CallHints(next_tool="search"), ok=True)  # ends after the release: ignored
    assert [type(e) for e in rec.events] == [RunStarted, RunFinished]


def test_a_failed_last_step_does_not_end_the_program(rec: Recorder) -> None:
    tracker = ProgramTracker(rec)
    p = tracker.begin_call("acme", "retry")
    tracker.end_call(p, CallHints(is_last_step=True), ok=False)
    assert ("acme", "retry") in tracker.programs  # the client will retry the step


def test_idle_programs_end_and_each_tenant_is_bounded(rec: Recorder, clock: Clock) -> None:
    tracker = ProgramTracker(rec, clock=clock, idle_timeout_s=60, max_programs_per_tenant=2)
    busy = tracker.begin_call("acme", "busy")
    idle = tracker.begin_call("acme", "idle")
    tracker.end_call(idle, CallHints(), ok=True)
    with pytest.raises(TooManyPrograms, match="release"):
        tracker.begin_call("acme", "third")
    tracker.begin_call("globex", "other")  # another tenant's budget
    clock.now += 61
    assert tracker.sweep() == 1  # the busy one has a call in flight: kept
    assert ("acme", "busy") in tracker.programs and ("acme", "idle") not in tracker.programs
    assert tracker.finished["idle"] == 1
    assert RunFinished(idle.run_id, "cancelled") in rec.events
    tracker.begin_call("acme", "third")  # room again
    assert tracker.active() == 3 and tracker.between_calls() == 0 and busy.in_flight == 1
