"""What a simulated replica schedules: `SimRequest` (one LLM call and its place in the replica's
queue, prefill or decode batch), its states, and the `StepStats` counters a replica keeps for the
driver's `RunOutcome`. Split from `sim/engine.py`."""

from __future__ import annotations

from dataclasses import dataclass

from legato.sim.kv_pool import Node

WAITING, PREFILL, DECODE, DONE, PARKED = range(5)


class SimRequest:
    """One LLM call inside the simulated engine."""

    __slots__ = (
        "a",
        "admit_seq",
        "call_id",
        "cidx",
        "computed",
        "dver",
        "first_admit_s",
        "generated",
        "hit_tokens",
        "nodes",
        "out_len",
        "priority",
        "prompt_len",
        "qver",
        "run",
        "seq",
        "state",
        "tree_blocks",
        "vver",
    )

    def __init__(self, call_id: str, run: int, prompt_len: int, out_len: int, priority: int) -> None:
        self.call_id = call_id
        self.run = run
        self.prompt_len = prompt_len
        self.out_len = out_len
        self.priority = priority
        self.nodes: list[Node] = []
        self.seq = 0  # queue order (kept through preemption: a preempted request goes first)
        self.admit_seq = 0
        self.qver = 0
        self.vver = 0
        self.dver = 0
        self.state = WAITING
        self.generated = 0
        self.computed = 0  # prefill phase only; decode phase derives it from the engine counter
        self.a = 0  # decode phase: computed = a + engine.d
        self.cidx = 0
        self.tree_blocks = 0  # blocks of its table owned by the prefix cache
        self.hit_tokens = -1  # prefix-cache hit at first admission (-1: not admitted yet)
        self.first_admit_s = -1.0

    @property
    def prefill_target(self) -> int:
        """Tokens to prefill: the prompt plus anything generated before a preemption."""
        return self.prompt_len + self.generated


@dataclass(slots=True)
class StepStats:
    """Counters the driver turns into a RunOutcome."""

    prefill_tokens: int = 0
    cached_prompt_tokens: int = 0
    preemptions: int = 0
    busy_s: float = 0.0
    steps: int = 0
    load_stall_s: float = 0.0  # step time spent waiting for KV loads from tiers
    pin_yields: int = 0  # pins released early because KV ran out (`pin_yield` engines)
    decoding_s: float = 0.0  # sequence-seconds in decode: sequences decoding x step time
    in_use_block_s: float = 0.0  # block-seconds referenced by requests or pins (not idle cache)
    # Step time a prefill chunk added beyond the step's memory time: the compute-bound part of
    # steps with prefill, which a memory-bound decode step could not hide (`CostModel.step_time`).
    prefill_exposed_s: float = 0.0
