"""`rl-grpo`: multi-turn RL rollouts in GRPO groups (verl / slime / SkyRL style).

Shape: programs come in groups of `group_size` (8) siblings that start from one prompt (their
`ProgramSpec.group` is the group id, so a router can keep them together and commit the shared
prompt once). Each sibling:
- turn 0 prompt = tenant system prompt (500-1,500 tokens, per tenant) + the group's task prompt
  (300-2,000 tokens, shared by the 8 siblings);
- 4-16 turns (uniform, drawn per sibling: episodes end at different times), each generating
  100-1,000 output tokens (siblings sample different outputs, so their contexts diverge after
  the task prompt), followed by an environment step, the `env` tool (code execution / shell /
  game step: lognormal, median 0.5 s, sigma 1.0) whose observation (100-2,000 tokens,
  log-uniform) is appended; the last turn has no environment step. These are agentic, tool-using
  rollouts (the multi-turn RL that verl / SkyRL run), whose contexts grow to 5-25k tokens, not
  single-answer math rollouts.

`n_programs` siblings are produced: ceil(n / group_size) groups, the last one truncated when n
is not a multiple of `group_size`. Arrivals: every group at t=0 (a rollout batch) unless
`arrival_rate` > 0, which is then in **groups** per second (Poisson); siblings of a group always
arrive together. Tenants are assigned per group.
"""

from __future__ import annotations

import math

from legato.bench.workloads.common import (
    LatencyModel,
    check_positive,
    check_range,
    log_uniform_int,
    per_tenant_tokens,
    start_workload,
    uniform_int,
)
from legato.sim.workload import CallSpec, ProgramSpec, Segment, Workload

ENV = LatencyModel(median_s=0.5, sigma=1.0)


def generate(
    n_programs: int,
    seed: int,
    *,
    tenants: int = 1,
    tenant_weights: str = "",
    tenant_mix: str = "",
    arrival_rate: float = 0.0,
    group_size: int = 8,
    system_min: int = 500,
    system_max: int = 1500,
    task_min: int = 300,
    task_max: int = 2000,
    turns_min: int = 4,
    turns_max: int = 16,
    output_min: int = 100,
    output_max: int = 1000,
    observation_min: int = 100,
    observation_max: int = 2000,
) -> Workload:
    """Generate `n_programs` rollouts in GRPO groups (see the module docstring for the shape)."""
    check_positive("programs", n_programs)
    check_positive("group_size", group_size)
    check_positive("turns_min", turns_min)
    for name, lo, hi in (
        ("system", system_min, system_max),
        ("task", task_min, task_max),
        ("turns", turns_min, turns_max),
        ("output", output_min, output_max),
        ("observation", observation_min, observation_max),
    ):
        check_range(name, lo, hi)
    n_groups = math.ceil(n_programs / group_size)
    rng, ids, owners, arrivals = start_workload(
        n_groups,
        seed,
        tenants=tenants,
        tenant_weights=tenant_weights,
        tenant_mix=tenant_mix,
        arrival_rate=arrival_rate,
    )
    system_tokens = per_tenant_tokens(rng, owners, system_min, system_max)
    programs: list[ProgramSpec] = []
    for group, (tenant, arrival) in enumerate(zip(owners, arrivals, strict=True)):
        system = ids.shared(("rl-system", tenant.name), system_tokens[tenant.name])
        task = ids.fresh(uniform_int(rng, task_min, task_max))
        for sibling in range(min(group_size, n_programs - len(programs))):
            prompt: tuple[Segment, ...] = (system, task)
            n_turns = uniform_int(rng, turns_min, turns_max)
            calls = []
            for turn in range(n_turns):
                out = ids.fresh(uniform_int(rng, output_min, output_max))
                last = turn == n_turns - 1
                calls.append(
                    CallSpec(
                        node=f"turn-{turn}",
                        prompt=prompt,
                        output_tokens=out.tokens,
                        output_seg_id=out.seg_id,
                        tool=None if last else "env",
                        tool_latency_s=0.0 if last else ENV.draw(rng),
                        deps=() if turn == 0 else (turn - 1,),
                    )
                )
                if not last:
                    prompt = (*prompt, out, ids.fresh(log_uniform_int(rng, observation_min, observation_max)))
            programs.append(
                ProgramSpec(
                    program_id=f"rl-grpo-{group}-{sibling}",
                    tenant=tenant.name,
                    arrival_s=arrival,
                    calls=tuple(calls),
                    kind="rl-grpo",
                    group=f"group-{group}",
                    tenant_weight=tenant.weight,
                )
            )
    return Workload(name="rl-grpo", programs=tuple(programs))
