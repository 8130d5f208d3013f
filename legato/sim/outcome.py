"""What one replay of a workload under one policy produced: raw facts, no statistics.

A driver (the simulator, or the runtime against a real engine) fills a `RunOutcome`;
`legato.bench.metrics` turns outcomes into the numbers `legato bench` reports. Keeping the two
apart means every driver is measured by the same code.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ProgramOutcome:
    program_id: str
    tenant: str
    arrival_s: float  # trace arrival for open-loop programs, else submission (see ProgramSpec)
    finish_s: float
    calls: int  # LLM calls completed
    prompt_tokens: int  # summed over its calls
    output_tokens: int
    submitted_s: float | None = None  # when the client submitted it (None: same as arrival_s)

    @property
    def tct_s(self) -> float:
        """Task completion time: arrival to last step finished (all queueing included)."""
        return self.finish_s - self.arrival_s


@dataclass(slots=True)
class RunOutcome:
    policy: str
    programs: list[ProgramOutcome]
    makespan_s: float  # first arrival to last finish
    prompt_tokens: int  # all prompt tokens of all calls (what a cache-less engine computes)
    prefill_tokens_computed: int  # prompt tokens actually computed, recomputation included
    cached_prompt_tokens: int  # prompt tokens served from any cache tier at admission
    preemptions: int
    pauses: int  # program-level pauses (admission control)
    replicas: int
    engine_busy_s: float  # summed over replicas
    # Weighted service per tenant: w_in * input + w_out * output tokens (VTC cost), unweighted
    # by the tenant's share. Metrics divide by tenant weights.
    service_by_tenant: dict[str, float] = field(default_factory=dict)
    tenant_weights: dict[str, float] = field(default_factory=dict)
    # The same service, counting only calls finished while every tenant still had a program
    # waiting to start (the window in which weighted fair sharing is owed); empty when the
    # driver does not track it.
    backlog_service_by_tenant: dict[str, float] = field(default_factory=dict)
    backlog_window_s: float = 0.0
    # Policy- or driver-specific numbers (e.g. reuse-predictor accuracy, tier loads).
    extra: dict[str, float] = field(default_factory=dict)
