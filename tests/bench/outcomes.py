"""Hand-made run outcomes for metric and report tests (test data, not part of the package)."""

from __future__ import annotations

from legato.sim.outcome import ProgramOutcome, RunOutcome


def outcome(policy: str = "p", scale: float = 1.0) -> RunOutcome:
    """Four programs of two tenants; TCTs 10, 20, 30, 40 s (times `scale`), makespan 60 s."""
    programs = [
        ProgramOutcome(f"x{i}", tenant, 0.0, 10.0 * (i + 1) * scale, calls, 1000, 100)
        for i, (tenant, calls) in enumerate([("a", 3), ("a", 5), ("b", 4), ("b", 8)])
    ]
    return RunOutcome(
        policy=policy,
        programs=programs,
        makespan_s=60.0,
        prompt_tokens=4000,
        prefill_tokens_computed=3000,
        cached_prompt_tokens=1000,
        preemptions=7,
        pauses=2,
        replicas=2,
        engine_busy_s=90.0,
        service_by_tenant={"a": 300.0, "b": 100.0},
        tenant_weights={"a": 2.0, "b": 1.0},
        extra={"reuse_mae_s": 0.25},
    )
