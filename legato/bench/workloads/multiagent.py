"""`multiagent`: a map-reduce multi-agent job (planner -> parallel workers -> reducer).

Shape of one program:
- **planner**: prompt = agent system prompt (3,000-6,000 tokens, one per tenant: the long prefix
  every agent of the tenant shares) + the task (500-2,000 tokens); 200-500 output tokens (the plan);
- **workers** (4-8 per program, uniform), all depending on the planner and running in parallel:
  worker i's first prompt = system + task + plan + its own sub-task (100-400 tokens), so the
  workers share everything up to the plan and differ only in a short suffix; each worker runs
  2-5 rounds (uniform) of 200-800 output tokens, and between rounds a `search` tool
  (lognormal, median 1.5 s, sigma 0.8) whose 500-4,000-token result (log-uniform: a snippet list
  up to a fetched page, as deep-research workers read) is appended;
- **reducer**: depends on every worker's last round; prompt = system + task + plan + every
  worker's final output; 300-1,000 output tokens.

Tenants and arrivals as in `swe` (`tenants`, `tenant_weights`, `tenant_mix`, `arrival_rate`;
default: one tenant, everything submitted at t=0).
"""

from __future__ import annotations

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

SEARCH = LatencyModel(median_s=1.5, sigma=0.8)


def generate(
    n_programs: int,
    seed: int,
    *,
    tenants: int = 1,
    tenant_weights: str = "",
    tenant_mix: str = "",
    arrival_rate: float = 0.0,
    workers_min: int = 4,
    workers_max: int = 8,
    rounds_min: int = 2,
    rounds_max: int = 5,
    system_min: int = 3000,
    system_max: int = 6000,
    task_min: int = 500,
    task_max: int = 2000,
    plan_min: int = 200,
    plan_max: int = 500,
    subtask_min: int = 100,
    subtask_max: int = 400,
    output_min: int = 200,
    output_max: int = 800,
    tool_output_min: int = 500,
    tool_output_max: int = 4000,
    reduce_min: int = 300,
    reduce_max: int = 1000,
) -> Workload:
    """Generate `n_programs` map-reduce jobs (see the module docstring for the shape)."""
    check_positive("programs", n_programs)
    check_positive("workers_min", workers_min)
    check_positive("rounds_min", rounds_min)
    for name, lo, hi in (
        ("workers", workers_min, workers_max),
        ("rounds", rounds_min, rounds_max),
        ("system", system_min, system_max),
        ("task", task_min, task_max),
        ("plan", plan_min, plan_max),
        ("subtask", subtask_min, subtask_max),
        ("output", output_min, output_max),
        ("tool_output", tool_output_min, tool_output_max),
        ("reduce", reduce_min, reduce_max),
    ):
        check_range(name, lo, hi)
    rng, ids, owners, arrivals = start_workload(
        n_programs,
        seed,
        tenants=tenants,
        tenant_weights=tenant_weights,
        tenant_mix=tenant_mix,
        arrival_rate=arrival_rate,
    )
    system_tokens = per_tenant_tokens(rng, owners, system_min, system_max)
    programs = []
    for index, (tenant, arrival) in enumerate(zip(owners, arrivals, strict=True)):
        system = ids.shared(("multiagent-system", tenant.name), system_tokens[tenant.name])
        head: tuple[Segment, ...] = (system, ids.fresh(uniform_int(rng, task_min, task_max)))
        plan = ids.fresh(uniform_int(rng, plan_min, plan_max))
        calls = [CallSpec(node="planner", prompt=head, output_tokens=plan.tokens, output_seg_id=plan.seg_id)]
        head = (*head, plan)
        finals: list[Segment] = []
        last_rounds: list[int] = []
        for worker in range(uniform_int(rng, workers_min, workers_max)):
            prompt: tuple[Segment, ...] = (*head, ids.fresh(uniform_int(rng, subtask_min, subtask_max)))
            n_rounds = uniform_int(rng, rounds_min, rounds_max)
            dep = 0
            for rnd in range(n_rounds):
                out = ids.fresh(uniform_int(rng, output_min, output_max))
                last = rnd == n_rounds - 1
                calls.append(
                    CallSpec(
                        node=f"worker-{worker}-{rnd}",
                        prompt=prompt,
                        output_tokens=out.tokens,
                        output_seg_id=out.seg_id,
                        tool=None if last else "search",
                        tool_latency_s=0.0 if last else SEARCH.draw(rng),
                        deps=(dep,),
                    )
                )
                dep = len(calls) - 1
                if last:
                    finals.append(out)
                else:
                    result = ids.fresh(log_uniform_int(rng, tool_output_min, tool_output_max))
                    prompt = (*prompt, out, result)
            last_rounds.append(dep)
        summary = ids.fresh(uniform_int(rng, reduce_min, reduce_max))
        calls.append(
            CallSpec(
                node="reducer",
                prompt=(*head, *finals),
                output_tokens=summary.tokens,
                output_seg_id=summary.seg_id,
                deps=tuple(last_rounds),
            )
        )
        programs.append(
            ProgramSpec(
                program_id=f"multiagent-{index}",
                tenant=tenant.name,
                arrival_s=arrival,
                calls=tuple(calls),
                kind="multiagent",
                tenant_weight=tenant.weight,
            )
        )
    return Workload(name="multiagent", programs=tuple(programs))
