"""The one decision applier: the same policy, driven through the simulated replica and through
the torch engine on the same tiny workload, gets the same decisions applied in the same order."""

from __future__ import annotations

import math
from collections.abc import Sequence

import anyio
import pytest
import torch

from legato.bench.torch_replay import replay_async
from legato.engine_adapter.base import SamplingParams
from legato.engine_adapter.torch import load_engine
from legato.scheduler.apply import BadDecision, DecisionApplier, ReplicaTraits
from legato.scheduler.events import (
    CallArrived,
    CallFinished,
    LLMCall,
    RunFinished,
    RunStarted,
    ToolFinished,
    ToolStarted,
)
from legato.scheduler.policy import (
    BasePolicy,
    ClusterView,
    Decision,
    Dispatch,
    NextUse,
    Pause,
    Pin,
    PolicyTraits,
    Resume,
    Unpin,
)
from legato.scheduler.runtime import PolicyScheduler
from legato.sim.driver import SimConfig, simulate
from legato.sim.workload import CallSpec, ProgramSpec, Segment, Workload
from tests.tiny_model import tiny_model_config


class Scripted(BasePolicy):
    """Dispatches every call to replica 0; pins after each call; pauses the run and marks its KV
    unneeded while its tool runs; resumes and unpins when the tool is done."""

    name = "scripted"

    def on_call(self, event: CallArrived, now: float, view: ClusterView) -> Sequence[Decision]:
        return (Dispatch(event.call.call_id, 0),)

    def on_call_finished(self, event: CallFinished, now: float, view: ClusterView) -> Sequence[Decision]:
        return (Pin(event.run_id, 30.0),)

    def on_tool_started(self, event: ToolStarted, now: float, view: ClusterView) -> Sequence[Decision]:
        return (Pause(event.run_id), NextUse(event.run_id, math.inf))

    def on_tool_finished(self, event: ToolFinished, now: float, view: ClusterView) -> Sequence[Decision]:
        return (Resume(event.run_id), Unpin(event.run_id))

    def on_run_finished(self, event: RunFinished, now: float, view: ClusterView) -> Sequence[Decision]:
        return (Unpin(event.run_id),)


def _workload() -> Workload:
    system, task = Segment(1, 32), Segment(2, 16)
    calls, prompt = [], (system, task)
    for j in range(3):
        out = 10 + 2 * j
        last = j == 2
        calls.append(
            CallSpec(
                f"step-{j}",
                prompt,
                output_tokens=8,
                output_seg_id=out,
                tool=None if last else "bash",
                tool_latency_s=0.0 if last else 1.0,
                deps=() if j == 0 else (j - 1,),
            )
        )
        prompt = (*prompt, Segment(out, 8), Segment(out + 1, 8))
    return Workload("parity", (ProgramSpec("p0", "t", 0.0, tuple(calls), kind="parity"),))


def test_sim_and_torch_apply_the_same_decisions_in_the_same_order() -> None:
    torch.set_num_threads(1)
    workload = _workload()
    in_sim: list[Decision] = []
    simulate(workload, Scripted(), SimConfig(kv_blocks=64), concurrency=1, decisions=in_sim)
    on_torch: list[Decision] = []

    async def main() -> None:
        await replay_async(
            workload,
            Scripted(),
            concurrency=1,
            token_scale=1.0,
            time_scale=0.01,
            kv_blocks=64,
            model_config=tiny_model_config(),
            decisions=on_torch,
        )

    anyio.run(main)
    kinds = [type(d).__name__ for d in in_sim]
    assert kinds == [
        *("Dispatch", "Pin", "Pause", "NextUse", "Resume", "Unpin") * 2,
        *("Dispatch", "Pin", "Unpin"),
    ]
    assert on_torch == in_sim


class _Recorder:
    """A `ReplicaControl` that records the calls it gets (for the applier's own checks)."""

    def __init__(self, traits: ReplicaTraits) -> None:
        self.traits = traits
        self.num_replicas = 2
        self.waiting = {"c1", "c2"}
        self.calls: list[str] = []

    def awaits_dispatch(self, call_id: str) -> bool:
        return call_id in self.waiting

    def dispatch(self, call_id: str, replica: int, priority: int) -> None:
        self.waiting.discard(call_id)
        self.calls.append(f"dispatch {call_id} {replica}")

    def set_priority(self, run_id: str, priority: int) -> None: ...

    def pause(self, run_id: str, evict: bool) -> None:
        self.calls.append(f"pause {run_id}")

    def resume(self, run_id: str) -> None: ...

    def pin(self, run_id: str, ttl_s: float) -> None: ...

    def unpin(self, run_id: str) -> None: ...

    def next_use(self, run_id: str, at_s: float) -> None: ...

    def prefetch(self, run_id: str, replica: int) -> None: ...


def test_a_bad_decision_raises_after_the_good_ones_of_the_batch_are_applied() -> None:
    control = _Recorder(ReplicaTraits(can_preempt_running=True))
    applier = DecisionApplier(control)
    with pytest.raises(BadDecision) as info:
        applier.apply([Dispatch("c1", 5), Dispatch("nope", 0), Dispatch("c2", 1), Pause("r")])
    assert control.calls == ["dispatch c2 1", "pause r"]
    assert len(info.value.problems) == 2
    assert "replica 5" in str(info.value) and "'nope'" in str(info.value)
    with pytest.raises(BadDecision, match="already dispatched"):
        applier.apply([Dispatch("c2", 0)])


class PauseOnSignal(BasePolicy):
    """Dispatches every call; pauses the run on the first signal (a Tick once a call runs, or
    a ToolStarted) and resumes it on the next one."""

    name = "pause-on-signal"

    def __init__(self, tick_s: float | None) -> None:
        self.traits = PolicyTraits(tick_s=tick_s)
        self.run_id: str | None = None
        self.signals = 0

    def on_call(self, event: CallArrived, now: float, view: ClusterView) -> Sequence[Decision]:
        self.run_id = event.call.run_id
        return (Dispatch(event.call.call_id, 0),)

    def _signal(self) -> Sequence[Decision]:
        if self.run_id is None or self.signals >= 2:
            return ()
        self.signals += 1
        return (Pause(self.run_id),) if self.signals == 1 else (Resume(self.run_id),)

    def on_tick(self, now: float, view: ClusterView) -> Sequence[Decision]:
        running = self.run_id is not None and view.replica(0).running > 0
        return self._signal() if running or self.signals == 1 else ()

    def on_tool_started(self, event: ToolStarted, now: float, view: ClusterView) -> Sequence[Decision]:
        return self._signal()


def test_pause_of_a_running_call_follows_the_declared_trait() -> None:
    """`can_preempt_running`: the simulated replica sends a paused run's running call back (its
    prompt is prefilled again after `Resume`); a real engine lets it run to completion."""
    one = CallSpec("only", (Segment(1, 512),), output_tokens=4000, output_seg_id=2)
    workload = Workload("pause", (ProgramSpec("p0", "t", 0.0, (one,), kind="pause"),))
    applied: list[Decision] = []
    out = simulate(
        workload, PauseOnSignal(tick_s=0.5), SimConfig(kv_blocks=1024), concurrency=1, decisions=applied
    )
    assert [type(d).__name__ for d in applied] == ["Dispatch", "Pause", "Resume"]
    assert out.prefill_tokens_computed > out.prompt_tokens  # preempted while running: recomputed

    async def main() -> tuple[dict[str, int], list[int], str | None]:
        engine = load_engine(None, "cpu", model_config=tiny_model_config(), num_blocks=64)
        policy = PauseOnSignal(tick_s=None)
        call = LLMCall("p0#0", "p0", "pause", "only", "t", tuple(range(40)), SamplingParams(max_tokens=24))
        got: list[int] = []
        reason = None
        async with engine, PolicyScheduler([engine], policy) as sched:
            sched.notify(RunStarted("p0", "pause", "t"))
            async for chunk in sched.generate(call):
                if not got:  # running in the engine: pause the run now
                    sched.notify(ToolStarted("p0", "signal"))
                got.extend(chunk.token_ids)
                reason = chunk.finish_reason or reason
            sched.notify(ToolStarted("p0", "signal"))  # resume
            return dict(sched.stats), got, reason

    stats, tokens, reason = anyio.run(main)
    assert stats["pauses"] == stats["resumes"] == 1 and stats["requeued"] == 0
    assert len(tokens) == 24 and reason == "length"  # ran to completion through the pause
