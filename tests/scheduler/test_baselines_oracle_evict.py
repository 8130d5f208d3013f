"""`oracle-evict` (was `belady`): Bélády's rule, evict the block whose next use is furthest
(Bélády 1966), fed the simulator's exact future. The hint of a step with a dependent call and
no tool must say "now", not "never" (issue 13: it used to be computed before the driver recorded
the step's end, so such KV was evicted first)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from legato.scheduler.baselines import POLICIES
from legato.scheduler.baselines.oracle_evict import OracleEvict
from legato.scheduler.events import CallFinished, Event
from legato.scheduler.policy import ClusterView, Decision, NextUse
from legato.sim import SimConfig, simulate
from legato.sim.workload import CallSpec, ProgramSpec, Segment, Workload


class _Recording(OracleEvict):
    def __init__(self) -> None:
        super().__init__()
        self.after_finish: list[tuple[str, float, float]] = []  # (call, now, hinted next use)

    def on_event(self, event: Event, now: float, view: ClusterView) -> Sequence[Decision]:
        out = super().on_event(event, now, view)
        if isinstance(event, CallFinished):
            for d in out:
                if isinstance(d, NextUse):
                    self.after_finish.append((event.call_id, now, d.at_s))
        return out


def _program() -> ProgramSpec:
    s = Segment(1, 800)
    return ProgramSpec(
        "p0",
        "t",
        0.0,
        (
            CallSpec("plan", (s,), 50, 2),  # no tool: call 1 follows at once
            CallSpec("act", (s, Segment(2, 50)), 50, 3, tool="bash", tool_latency_s=4.0, deps=(0,)),
            CallSpec("end", (s, Segment(2, 50), Segment(3, 50), Segment(4, 30)), 20, 5, deps=(1,)),
        ),
    )


def test_registry_name_is_oracle_evict_and_belady_is_gone() -> None:
    assert "oracle-evict" in POLICIES and "belady" not in POLICIES
    assert POLICIES["oracle-evict"]().traits.oracle


def test_next_use_hint_counts_dependent_calls_and_tool_ends() -> None:
    policy = _Recording()
    simulate(Workload("w", (_program(),)), policy, SimConfig(kv_blocks=400), concurrency=1)
    hints = {call: (now, at) for call, now, at in policy.after_finish}
    now, at = hints["p0#0"]
    assert at == now  # a dependent call follows at once: needed now, not never
    now, at = hints["p0#1"]
    assert at == now + 4.0  # needed when the tool ends
    assert hints["p0#2"][1] == math.inf  # the last step: never again
