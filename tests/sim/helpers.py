"""Hand-built workloads for the simulator tests (no dependency on the bench generators)."""

from __future__ import annotations

import random

from legato.sim.workload import CallSpec, ProgramSpec, Segment, Workload


def agent_workload(
    n_programs: int,
    *,
    seed: int = 0,
    tenants: int = 2,
    steps: tuple[int, int] = (3, 8),
    system_tokens: int = 3000,
    tool_out: tuple[int, int] = (200, 3000),
    output: tuple[int, int] = (100, 600),
    tool_median_s: float = 2.0,
    arrival_gap_s: float = 0.0,
) -> Workload:
    """Coding-agent-like programs: a shared system prompt per tenant, then steps that each append
    the previous output and a tool result; lognormal tool latencies of seconds."""
    rng = random.Random(seed)
    next_id = 0

    def seg(tokens: int) -> Segment:
        nonlocal next_id
        next_id += 1
        return Segment(next_id, tokens)

    systems = [seg(system_tokens) for _ in range(tenants)]
    programs = []
    for i in range(n_programs):
        tenant = i % tenants
        prompt: tuple[Segment, ...] = (systems[tenant], seg(rng.randint(300, 1500)))
        calls = []
        n_steps = rng.randint(*steps)
        for k in range(n_steps):
            out_tokens = rng.randint(*output)
            out_id = next_id + 1
            next_id += 1
            last = k == n_steps - 1
            latency = 0.0 if last else rng.lognormvariate(0.0, 1.0) * tool_median_s
            calls.append(
                CallSpec(
                    node=f"step-{k}",
                    prompt=prompt,
                    output_tokens=out_tokens,
                    output_seg_id=out_id,
                    tool=None if last else rng.choice(("bash", "test", "edit")),
                    tool_latency_s=latency,
                    deps=() if k == 0 else (k - 1,),
                )
            )
            prompt = (*prompt, Segment(out_id, out_tokens), seg(rng.randint(*tool_out)))
        programs.append(
            ProgramSpec(
                program_id=f"p{i:04d}",
                tenant=f"t{tenant}",
                arrival_s=i * arrival_gap_s,
                calls=tuple(calls),
                kind="agent",
                tenant_weight=1.0 + tenant,
            )
        )
    return Workload("agent", tuple(programs), {"seed": seed})


def map_reduce_workload(n_programs: int, *, fan_out: int = 4) -> Workload:
    """Programs with parallel mapper calls on a shared prefix and a reducer that reads them all."""
    next_id = 0

    def new_id() -> int:
        nonlocal next_id
        next_id += 1
        return next_id

    shared = Segment(new_id(), 1000)
    programs = []
    for i in range(n_programs):
        doc = Segment(new_id(), 500)
        mappers = []
        outs = []
        for m in range(fan_out):
            out_id = new_id()
            mappers.append(
                CallSpec(f"map-{m}", (shared, doc, Segment(new_id(), 40)), 80, out_id, "fetch", 0.5)
            )
            outs.append(Segment(out_id, 80))
        reducer = CallSpec("reduce", (shared, doc, *outs), 200, new_id(), deps=tuple(range(fan_out)))
        programs.append(ProgramSpec(f"m{i:03d}", "t0", 0.0, (*mappers, reducer), kind="mapreduce"))
    return Workload("mapreduce", tuple(programs))
