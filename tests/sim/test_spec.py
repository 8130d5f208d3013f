"""Speculation in the simulator: measured acceptance priced by the roofline model."""

from __future__ import annotations

import pytest

from legato.sim import SimConfig, simulate
from legato.sim.cost_model import CostModel
from legato.sim.outcome import RunOutcome
from legato.sim.spec import SpecCostModel, acceptance
from tests.sim.helpers import agent_workload


def _models() -> tuple[CostModel, SpecCostModel]:
    base = SimConfig().cost_model()
    spec = SimConfig(spec_acceptance=acceptance("swe", "suffix")).cost_model()
    assert isinstance(spec, SpecCostModel)
    return base, spec


def test_the_acceptance_model_is_the_stored_measurement() -> None:
    table = dict(acceptance("swe", "suffix"))
    assert set(table) >= {1, 2, 4, 8, 16}
    assert all(1.0 <= tau <= g + 1 for g, tau in table.items())
    assert acceptance("swe", "none") == ()


def test_speculation_speeds_up_small_memory_bound_batches() -> None:
    base, spec = _models()
    assert spec.draft_len(1, 2000.0)[0] > 0
    assert spec.decode_run_time(1, 2000.0, 50) < base.decode_run_time(1, 2000.0, 50) / 1.5


def test_speculation_backs_off_when_the_step_is_compute_bound() -> None:
    base, spec = _models()
    n = 1024  # short contexts, large batch: past the roofline ridge, drafted tokens cost FLOPs
    assert spec.draft_len(n, n * 100.0) == (0, 1.0)
    assert spec.decode_run_time(n, n * 100.0, 7) == base.decode_run_time(n, n * 100.0, 7)
    for n in (1, 8, 32, 256, 4096):  # never slower than not speculating
        assert spec.decode_run_time(n, n * 3000.0, 5) <= base.decode_run_time(n, n * 3000.0, 5) * (1 + 1e-12)


def test_closed_form_equals_the_sum_of_verify_steps() -> None:
    _, spec = _models()
    n, ctx, k = 8, 8 * 1500.0, 40
    g, tau = spec.draft_len(n, ctx)
    m = spec.model
    total = 0.0
    for j in range(k):
        c = ctx + n * j
        compute = 2 * m.params * n * (g + 1) + m.attn_flops_per_ctx_token * (
            (g + 1) * c + n * g * (g + 1) / 2
        )
        memory = m.weight_bytes + m.kv_bytes_per_token * (c + n * g)
        total += (max(compute / spec.flops_per_s, memory / spec.bytes_per_s) + spec.overhead_s) / tau
    assert spec.decode_run_time(n, ctx, k) == pytest.approx(total, rel=1e-9)


def test_a_speculating_replay_does_the_same_work_sooner() -> None:
    w = agent_workload(4, steps=(3, 3))
    plain = simulate(w, "legato", SimConfig(), concurrency=4)
    spec = simulate(w, "legato", SimConfig(spec_acceptance=acceptance("swe", "suffix")), concurrency=4)

    def work(out: RunOutcome) -> list[tuple[str, int, int]]:
        return sorted((p.program_id, p.calls, p.output_tokens) for p in out.programs)

    assert work(spec) == work(plain)
    assert spec.makespan_s < plain.makespan_s


@pytest.mark.parametrize(
    ("workload", "method", "message"),
    [("swe", "eagle", "unknown --spec 'eagle'"), ("multiagent", "suffix", "no acceptance measured")],
)
def test_unknown_method_or_unmeasured_workload_is_refused(workload: str, method: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        acceptance(workload, method)
