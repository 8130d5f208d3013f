"""The numbers `legato bench` reports, computed from a `RunOutcome` by pure functions.

Every driver (simulator or runtime) is measured by this one module, so two policies or two
engines are always compared with the same definitions:

- TCT (task completion time) = a program's finish minus its arrival: the trace's arrival for
  replayed traces (`ProgramSpec.open_loop`; waiting for a client slot included), its submission
  for closed-loop generators (queueing in the engine included);
  percentiles interpolate linearly between order statistics (numpy's default method);
- `steps_per_min` = LLM calls completed per minute of makespan (program throughput in steps);
- `prefix_hit_rate` = cached prompt tokens / prompt tokens (0 when there were no prompt tokens);
- `engine_busy_frac` = engine busy seconds / (replicas x makespan);
- `jain_index` = Jain's fairness index over each tenant's service divided by its weight:
  (sum x)^2 / (n * sum x^2); 1.0 means every tenant got service in proportion to its weight.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from legato.sim.outcome import RunOutcome


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0-100) with linear interpolation; 0.0 for no values."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def tcts(outcome: RunOutcome) -> list[float]:
    return [p.tct_s for p in outcome.programs]


def mean_tct_s(outcome: RunOutcome) -> float:
    values = tcts(outcome)
    return sum(values) / len(values) if values else 0.0


def steps_per_min(outcome: RunOutcome) -> float:
    calls = sum(p.calls for p in outcome.programs)
    return calls * 60.0 / outcome.makespan_s if outcome.makespan_s > 0 else 0.0


def prefix_hit_rate(outcome: RunOutcome) -> float:
    return outcome.cached_prompt_tokens / outcome.prompt_tokens if outcome.prompt_tokens > 0 else 0.0


def engine_busy_frac(outcome: RunOutcome) -> float:
    capacity = outcome.replicas * outcome.makespan_s
    return outcome.engine_busy_s / capacity if capacity > 0 else 0.0


def _weight(outcome: RunOutcome, tenant: str) -> float:
    weight = outcome.tenant_weights.get(tenant, 1.0)
    if weight <= 0:
        raise ValueError(f"tenant {tenant!r} has weight {weight}; weights must be > 0")
    return weight


def normalized_service(outcome: RunOutcome) -> dict[str, float]:
    """Each tenant's service divided by its weight (tenants with programs or service)."""
    tenants = set(outcome.service_by_tenant) | {p.tenant for p in outcome.programs}
    return {t: outcome.service_by_tenant.get(t, 0.0) / _weight(outcome, t) for t in sorted(tenants)}


def jain_index(values: Sequence[float]) -> float:
    """Jain's fairness index of `values`; 1.0 for zero or one value or all zeros."""
    squares = sum(v * v for v in values)
    if len(values) <= 1 or squares == 0:
        return 1.0
    return sum(values) ** 2 / (len(values) * squares)


@dataclass(frozen=True, slots=True)
class TenantMetrics:
    programs: int
    weight: float
    service: float
    normalized_service: float
    mean_tct_s: float
    backlog_service: float  # service in the backlogged window (see `backlog_share`)
    backlog_share: float


def backlog_shares(outcome: RunOutcome) -> dict[str, float]:
    """Each tenant's service per weight in the backlogged window (calls finished while every
    tenant still had a program waiting to start), over the mean of that across tenants: 1.0 for
    every tenant means service exactly in proportion to the weights. Whole-run totals cannot
    show it (every program finishes, so totals are just the workload's); this window is where
    fair sharing is owed. Empty when the driver did not track it."""
    norm = {t: s / _weight(outcome, t) for t, s in outcome.backlog_service_by_tenant.items()}
    mean = sum(norm.values()) / len(norm) if norm else 0.0
    if mean <= 0:
        return {}
    return {t: v / mean for t, v in norm.items()}


def per_tenant(outcome: RunOutcome) -> dict[str, TenantMetrics]:
    norm = normalized_service(outcome)
    shares = backlog_shares(outcome)
    result = {}
    for tenant in norm:
        own = [p.tct_s for p in outcome.programs if p.tenant == tenant]
        result[tenant] = TenantMetrics(
            programs=len(own),
            weight=_weight(outcome, tenant),
            service=outcome.service_by_tenant.get(tenant, 0.0),
            normalized_service=norm[tenant],
            mean_tct_s=sum(own) / len(own) if own else 0.0,
            backlog_service=outcome.backlog_service_by_tenant.get(tenant, 0.0),
            backlog_share=shares.get(tenant, 0.0),
        )
    return result


@dataclass(frozen=True, slots=True)
class PolicyMetrics:
    """Everything reported for one policy's run (the JSON object under `policies.<name>`)."""

    programs: int
    llm_calls: int
    makespan_s: float
    mean_tct_s: float
    p50_tct_s: float
    p99_tct_s: float
    steps_per_min: float
    prompt_tokens: int
    prefill_tokens_computed: int
    prefix_hit_rate: float
    preemptions: int
    pauses: int
    engine_busy_frac: float
    jain_index: float
    backlog_window_s: float
    backlog_jain_index: float  # Jain over backlogged-window service per weight
    per_tenant: dict[str, TenantMetrics]
    extra: dict[str, float]


def summarize(outcome: RunOutcome) -> PolicyMetrics:
    """All metrics of one run."""
    values = tcts(outcome)
    return PolicyMetrics(
        programs=len(outcome.programs),
        llm_calls=sum(p.calls for p in outcome.programs),
        makespan_s=outcome.makespan_s,
        mean_tct_s=mean_tct_s(outcome),
        p50_tct_s=percentile(values, 50.0),
        p99_tct_s=percentile(values, 99.0),
        steps_per_min=steps_per_min(outcome),
        prompt_tokens=outcome.prompt_tokens,
        prefill_tokens_computed=outcome.prefill_tokens_computed,
        prefix_hit_rate=prefix_hit_rate(outcome),
        preemptions=outcome.preemptions,
        pauses=outcome.pauses,
        engine_busy_frac=engine_busy_frac(outcome),
        jain_index=jain_index(list(normalized_service(outcome).values())),
        backlog_window_s=outcome.backlog_window_s,
        backlog_jain_index=jain_index(list(backlog_shares(outcome).values())),
        per_tenant=per_tenant(outcome),
        extra=dict(outcome.extra),
    )
