"""`chat`: multi-turn chat sessions with user think time between turns.

Shape of one program (one session): the prompt of turn k = tenant system prompt (200-1,000
tokens, per tenant) + every earlier user message and assistant reply + the new user message
(20-400 tokens, uniform); the reply has 50-800 tokens (uniform); 2-12 turns (uniform). Between
turns the user reads and types: modelled as a tool step named `user` (lognormal think time,
median 15 s, sigma 0.8, capped at 300 s), so a program-aware cache knows the session will come
back and roughly when. The last turn has no think time after it.

Tenants and arrivals as in `swe` (default: one tenant, every session submitted at t=0, and the
driver's `concurrency` limits how many are open at once).
"""

from __future__ import annotations

from legato.bench.workloads.common import (
    LatencyModel,
    check_positive,
    check_range,
    per_tenant_tokens,
    start_workload,
    uniform_int,
)
from legato.sim.workload import CallSpec, ProgramSpec, Segment, Workload


def generate(
    n_programs: int,
    seed: int,
    *,
    tenants: int = 1,
    tenant_weights: str = "",
    tenant_mix: str = "",
    arrival_rate: float = 0.0,
    system_min: int = 200,
    system_max: int = 1000,
    turns_min: int = 2,
    turns_max: int = 12,
    user_min: int = 20,
    user_max: int = 400,
    output_min: int = 50,
    output_max: int = 800,
    think_median_s: float = 15.0,
    think_sigma: float = 0.8,
) -> Workload:
    """Generate `n_programs` chat sessions (see the module docstring for the shape)."""
    check_positive("programs", n_programs)
    check_positive("turns_min", turns_min)
    for name, lo, hi in (
        ("system", system_min, system_max),
        ("turns", turns_min, turns_max),
        ("user", user_min, user_max),
        ("output", output_min, output_max),
    ):
        check_range(name, lo, hi)
    if think_median_s <= 0 or think_sigma < 0:
        raise ValueError(
            f"think_median_s must be > 0 and think_sigma >= 0, got {think_median_s}, {think_sigma}"
        )
    think = LatencyModel(median_s=think_median_s, sigma=think_sigma)
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
        history: tuple[Segment, ...] = (ids.shared(("chat-system", tenant.name), system_tokens[tenant.name]),)
        n_turns = uniform_int(rng, turns_min, turns_max)
        calls = []
        for turn in range(n_turns):
            prompt = (*history, ids.fresh(uniform_int(rng, user_min, user_max)))
            reply = ids.fresh(uniform_int(rng, output_min, output_max))
            last = turn == n_turns - 1
            calls.append(
                CallSpec(
                    node=f"turn-{turn}",
                    prompt=prompt,
                    output_tokens=reply.tokens,
                    output_seg_id=reply.seg_id,
                    tool=None if last else "user",
                    tool_latency_s=0.0 if last else think.draw(rng),
                    deps=() if turn == 0 else (turn - 1,),
                )
            )
            history = (*prompt, reply)
        programs.append(
            ProgramSpec(
                program_id=f"chat-{index}",
                tenant=tenant.name,
                arrival_s=arrival,
                calls=tuple(calls),
                kind="chat",
                tenant_weight=tenant.weight,
            )
        )
    return Workload(name="chat", programs=tuple(programs))
