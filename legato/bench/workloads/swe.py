"""`swe`: a SWE-agent / OpenHands-like coding agent.

Shape of one program (one issue being fixed):
- prompt of step 0 = tenant system prompt (2,000-4,000 tokens, one per tenant, shared by all its
  programs) + the task (an issue statement, 300-1,500 tokens, unique per program);
- 10-60 steps (uniform); each step generates 100-600 output tokens (uniform) — the agent's
  thought and action — and then runs one tool whose output (200-3,000 tokens, log-uniform: most
  observations are short, a few are whole files or test logs) is appended to the context;
- step k's prompt = step k-1's prompt + step k-1's output + step k-1's tool output, so every
  step extends the previous one's KV prefix: exactly the reuse a program-aware cache keeps;
- the last step submits: no tool after it.

Tool types and their latencies (lognormal; median and log-space sigma; capped at 300 s), picked
per step with the probabilities below. The medians follow the usual picture of an agent loop:
file edits and searches are sub-second, shell commands about a second, test runs several seconds
with a long tail:

| tool   | probability | median s | sigma |
| ------ | ----------: | -------: | ----: |
| bash   | 0.35        | 1.0      | 1.0   |
| edit   | 0.25        | 0.3      | 0.5   |
| search | 0.25        | 0.6      | 0.7   |
| test   | 0.15        | 8.0      | 0.8   |

Programs are spread over `tenants` tenants (`tenant_weights`: fair-share weights, `tenant_mix`:
relative program counts; both comma lists, default equal). Arrivals: all at t=0 unless
`arrival_rate` > 0 (Poisson, programs per second).
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
    weighted_choice,
)
from legato.sim.workload import CallSpec, ProgramSpec, Segment, Workload

TOOLS: dict[str, tuple[float, LatencyModel]] = {
    "bash": (0.35, LatencyModel(median_s=1.0, sigma=1.0)),
    "edit": (0.25, LatencyModel(median_s=0.3, sigma=0.5)),
    "search": (0.25, LatencyModel(median_s=0.6, sigma=0.7)),
    "test": (0.15, LatencyModel(median_s=8.0, sigma=0.8)),
}
_TOOL_ODDS = tuple((name, p) for name, (p, _) in TOOLS.items())


def generate(
    n_programs: int,
    seed: int,
    *,
    tenants: int = 1,
    tenant_weights: str = "",
    tenant_mix: str = "",
    arrival_rate: float = 0.0,
    system_min: int = 2000,
    system_max: int = 4000,
    task_min: int = 300,
    task_max: int = 1500,
    steps_min: int = 10,
    steps_max: int = 60,
    output_min: int = 100,
    output_max: int = 600,
    tool_output_min: int = 200,
    tool_output_max: int = 3000,
) -> Workload:
    """Generate `n_programs` coding-agent runs (see the module docstring for the shape)."""
    check_positive("programs", n_programs)
    for name, lo, hi in (
        ("system", system_min, system_max),
        ("task", task_min, task_max),
        ("steps", steps_min, steps_max),
        ("output", output_min, output_max),
        ("tool_output", tool_output_min, tool_output_max),
    ):
        check_range(name, lo, hi)
    check_positive("steps_min", steps_min)
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
        system = ids.shared(("swe-system", tenant.name), system_tokens[tenant.name])
        prompt: tuple[Segment, ...] = (system, ids.fresh(uniform_int(rng, task_min, task_max)))
        n_steps = uniform_int(rng, steps_min, steps_max)
        calls = []
        for step in range(n_steps):
            out = ids.fresh(uniform_int(rng, output_min, output_max))
            last = step == n_steps - 1
            tool = None if last else weighted_choice(rng, _TOOL_ODDS)
            latency = 0.0 if tool is None else TOOLS[tool][1].draw(rng)
            calls.append(
                CallSpec(
                    node=f"step-{step}",
                    prompt=prompt,
                    output_tokens=out.tokens,
                    output_seg_id=out.seg_id,
                    tool=tool,
                    tool_latency_s=latency,
                    deps=() if step == 0 else (step - 1,),
                )
            )
            if not last:
                observation = ids.fresh(log_uniform_int(rng, tool_output_min, tool_output_max))
                prompt = (*prompt, out, observation)
        programs.append(
            ProgramSpec(
                program_id=f"swe-{index}",
                tenant=tenant.name,
                arrival_s=arrival,
                calls=tuple(calls),
                kind="swe",
                tenant_weight=tenant.weight,
            )
        )
    return Workload(name="swe", programs=tuple(programs))
