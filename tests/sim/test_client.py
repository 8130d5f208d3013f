"""What the replay client tells the scheduler about shared prompt prefixes (`SharedPrefixes`)."""

from __future__ import annotations

from collections.abc import Sequence

from legato.scheduler.events import CallArrived
from legato.scheduler.policy import BasePolicy, ClusterView, Decision, Dispatch
from legato.sim import SimConfig, simulate
from legato.sim.client import SharedPrefixes
from legato.sim.workload import CallSpec, ProgramSpec, Segment, Workload

SYSTEM, SCHEMA_A, SCHEMA_B, OTHER = Segment(1, 800), Segment(2, 3000), Segment(3, 2000), Segment(4, 500)


def _program(pid: str, *prompts: tuple[Segment, ...], group: str | None = None) -> ProgramSpec:
    base = 100 * (1 + int(pid.strip("p") or 0))
    calls = tuple(
        CallSpec(f"n{j}", prompt, 10, base + j, deps=(j - 1,) if j else ())
        for j, prompt in enumerate(prompts)
    )
    return ProgramSpec(pid, "t", 0.0, calls, group=group)


def _question(pid: str) -> Segment:
    return Segment(1000 + int(pid.strip("p")), 100)


def _workload() -> Workload:
    # p1 and p2 ask about database A (system prompt + schema A); p3 about database B, alone;
    # p4 opens with a prompt nobody else has.
    return Workload(
        "db",
        (
            _program("p1", (SYSTEM, SCHEMA_A, _question("p1"))),
            _program("p2", (SYSTEM, SCHEMA_A, _question("p2"))),
            _program("p3", (SYSTEM, SCHEMA_B, _question("p3"))),
            _program("p4", (OTHER, _question("p4"))),
        ),
    )


def test_leading_segments_other_programs_start_with_are_shared() -> None:
    shared = SharedPrefixes(_workload())
    assert shared.leading((SYSTEM, SCHEMA_A, _question("p1"))) == (SYSTEM, SCHEMA_A)
    assert shared.leading((SYSTEM, SCHEMA_B, _question("p3"))) == (SYSTEM,)  # schema B: p3 only
    assert shared.leading((OTHER, _question("p4"))) == ()
    # A later call that extends a shared prefix shares the same leading part.
    assert shared.leading((SYSTEM, SCHEMA_A, _question("p1"), Segment(9, 50))) == (SYSTEM, SCHEMA_A)


def test_an_rl_groups_own_prompt_is_not_a_shared_prefix() -> None:
    # Two samples of one GRPO group start with the same task prompt; that prompt is the group's
    # (announced with the group), shared with nobody else. The system prompt is shared.
    task = Segment(7, 400)
    workload = Workload(
        "grpo",
        (
            _program("p1", (SYSTEM, task), group="g"),
            _program("p2", (SYSTEM, task), group="g"),
            _program("p3", (SYSTEM, Segment(8, 300)), group="h"),
        ),
    )
    assert SharedPrefixes(workload).leading((SYSTEM, task)) == (SYSTEM,)


class _Recorder(BasePolicy):
    """FCFS on replica 0 that records each call's declared shared prefix."""

    name = "recorder"

    def __init__(self) -> None:
        self.shared: dict[str, int] = {}

    def on_call(self, event: CallArrived, now: float, view: ClusterView) -> Sequence[Decision]:
        self.shared[event.call.run_id] = event.call.shared_prefix_tokens
        return (Dispatch(event.call.call_id, 0),)


def test_the_simulator_declares_the_shared_prefix_on_every_call() -> None:
    recorder = _Recorder()
    simulate(_workload(), recorder, SimConfig(), concurrency=4)
    assert recorder.shared == {"p1": 3800, "p2": 3800, "p3": 800, "p4": 0}
