"""Hand-made events and a settable cluster view for the baseline tests."""

from __future__ import annotations

from dataclasses import dataclass, field

from legato.scheduler.events import CallArrived, CallFinished, CallHints, Event, LLMCall
from legato.scheduler.policy import ClusterView, Decision, Policy, ReplicaView


@dataclass
class FakeView:
    """`ClusterView` whose replica numbers a test sets directly."""

    total_blocks: list[int]
    block_size: int = 16
    free: dict[int, int] = field(default_factory=dict)  # replica -> free blocks (default: none)

    @property
    def num_replicas(self) -> int:
        return len(self.total_blocks)

    def replica(self, index: int) -> ReplicaView:
        total = self.total_blocks[index]
        return ReplicaView(index, self.block_size, total, self.free.get(index, 0), 0, 0)

    def cached_prefix_tokens(self, replica: int, call_id: str) -> int:
        return 0

    def resident_tokens(self, replica: int, run_id: str) -> int:
        return 0


def arrive(run: str, j: int, prompt: int, tool: str | None = None) -> CallArrived:
    call = LLMCall(f"{run}#{j}", run, "p", "n", "t", (), num_prompt_tokens=prompt, hints=CallHints(tool))
    return CallArrived(call)


def finish(run: str, j: int, prompt: int, output: int, cached: int = 0) -> CallFinished:
    return CallFinished(f"{run}#{j}", run, prompt, output, cached, "stop")


def on(policy: Policy, event: Event, now: float, view: ClusterView) -> list[Decision]:
    return list(policy.on_event(event, now, view))
