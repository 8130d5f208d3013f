"""`legato bench bound`: the best makespan any policy could reach with the simulator's KV memory.

Why: a target such as "steps/min >= 1.5x fcfs-lru" is only meaningful if some policy could reach
it on the simulated replica. This computes, from the workload and the cost model alone (no
replay), a lower bound on the makespan of *every* policy that keeps KV on one replica's device,
and so an upper bound on its steps/min.

Under the cost model a decode step costs at least its memory term, `(weights + KV read) / bw`,
plus the fixed overhead. Summed over a run:

* **KV reads**: every decoded token reads its whole context (prompt + output so far), whoever
  schedules it: `sum over calls of (output - 1) * mean context * kv_bytes / bw`.
* **Steps**: a step holds, in the KV pool, the context of every sequence decoding in it. Count a
  call's context as its own output plus its prompt's segments, each segment of `s` tokens shared
  `s / k` where `k` bounds how many of its users can decode in the same step (they must be
  independent calls: `k` is the number of chains in a chain cover of the users along
  dependencies, which is at least the largest antichain). Then the held tokens summed over all
  steps is at least `sum over calls of (output - 1) * private context`, and each step holds at
  most the pool's capacity: `steps >= that sum / capacity`. Each step costs at least
  `weights / bw + overhead`.

Prefill, tool waits, fragmentation and the tail of the run only add to the real makespan, so
`makespan >= KV reads + steps * per-step cost` holds for any admission, eviction or ordering.
With R replicas the same work is at best split evenly, so the bound is that over R. Host or
Redis tiers do not lift it (a decoding sequence's KV is on the device). Infinite KV
(`infinite-kv`) is not bound by the step count and can exceed it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

from legato.sim.driver import SimConfig
from legato.sim.workload import ProgramSpec, Workload


@dataclass(frozen=True, slots=True)
class KvBound:
    capacity_tokens: int  # the replica's KV pool
    decode_tokens: int  # tokens produced by decode steps (each call's first comes from prefill)
    kv_read_s: float  # seconds of KV reads those tokens cost under any policy
    min_steps: float  # fewest decode steps the pool allows (over all replicas)
    step_fixed_s: float  # weights read + overhead, per step
    makespan_s: float  # lower bound on any policy's makespan with KV on the device
    total_calls: int
    steps_per_min: float  # upper bound: total calls per minute of `makespan_s`

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sharing(program: ProgramSpec, shared_users: dict[int, int]) -> None:
    """Add to `shared_users[seg]` the chains of `program`'s calls that use segment `seg`: a call
    continues the chain of one of its dependencies that uses the segment (each chain continues
    once), else starts a new one."""
    continued: set[tuple[int, int]] = set()  # (segment, call index) whose chain was continued
    uses: list[set[int]] = [{s.seg_id for s in c.prompt} for c in program.calls]
    for i, call in enumerate(program.calls):
        for seg in uses[i]:
            prev = next((d for d in call.deps if seg in uses[d] and (seg, d) not in continued), None)
            if prev is None:
                shared_users[seg] += 1
            else:
                continued.add((seg, prev))


def compute(workload: Workload, config: SimConfig) -> KvBound:
    """The bound for `workload` on `config.replicas` replicas (see the module docstring)."""
    cost = config.cost_model()
    model = cost.model
    blocks = config.kv_blocks if config.kv_blocks is not None else cost.kv_capacity_blocks(config.block_size)
    capacity = blocks * config.block_size
    chains: dict[int, int] = defaultdict(int)
    for program in workload.programs:
        _sharing(program, chains)
    decode_tokens = 0
    context_reads = 0.0  # sum over decoded tokens of the context they attend to
    held = 0.0  # sum over decoded tokens of their sequence's private context
    for program in workload.programs:
        for call in program.calls:
            n = max(0, call.output_tokens - 1)
            own = 1 + (call.output_tokens - 1) / 2  # mean output so far while decoding
            decode_tokens += n
            context_reads += n * (call.prompt_tokens + own)
            held += n * (sum(s.tokens / chains[s.seg_id] for s in call.prompt) + own)
    bw = cost.bytes_per_s
    kv_read_s = context_reads * model.kv_bytes_per_token / bw
    min_steps = held / capacity
    step_fixed_s = model.weight_bytes / bw + cost.overhead_s
    makespan = (kv_read_s + min_steps * step_fixed_s) / config.replicas
    calls = workload.total_calls
    return KvBound(
        capacity_tokens=capacity,
        decode_tokens=decode_tokens,
        kv_read_s=kv_read_s,
        min_steps=min_steps,
        step_fixed_s=step_fixed_s,
        makespan_s=makespan,
        total_calls=calls,
        steps_per_min=calls * 60.0 / makespan if makespan > 0 else 0.0,
    )


def render(bound: KvBound, workload: str, baseline: float | None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"legato bench bound ({workload}): any policy, KV on the device")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("KV pool (tokens)", f"{bound.capacity_tokens:,}")
    table.add_row("decoded tokens", f"{bound.decode_tokens:,}")
    table.add_row("KV reads (s, any policy)", f"{bound.kv_read_s:.0f}")
    table.add_row("decode steps (at least)", f"{bound.min_steps:,.0f}")
    table.add_row("per-step weights + overhead (ms)", f"{bound.step_fixed_s * 1e3:.2f}")
    table.add_row("makespan (s, at least)", f"{bound.makespan_s:.0f}")
    table.add_row("steps/min (at most)", f"{bound.steps_per_min:.1f}")
    if baseline:
        ratio = bound.steps_per_min / baseline
        table.add_row(f"ratio vs {baseline:.1f} steps/min (at most)", f"{ratio:.3f}x")
    Console().print(table)
