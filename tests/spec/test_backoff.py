"""The back-off rule: a fitted step cost model, and drafts kept only while they raise the
expected tokens per second of the step."""

from __future__ import annotations

import pytest

from legato.spec.backoff import AcceptanceCalibration, StepCostModel, plan_drafts


def _model(per_step: float, per_token: float, sizes: list[int]) -> StepCostModel:
    m = StepCostModel()
    for n in sizes:
        m.observe(n, per_step + per_token * n)
    return m


def test_the_cost_model_recovers_a_step_and_a_token_price() -> None:
    m = _model(0.010, 0.001, [1, 5, 3, 17, 9, 2, 12])
    assert m.fitted
    assert m.per_step_s == pytest.approx(0.010, rel=1e-6)
    assert m.per_token_s == pytest.approx(0.001, rel=1e-6)
    assert m(10) == pytest.approx(0.020)


def test_the_cost_model_skips_warm_up_and_needs_varied_steps() -> None:
    m = StepCostModel()
    m.observe(4, 10.0)  # the first step pays one-time costs: not used
    for _ in range(5):
        m.observe(4, 0.02)
    assert not m.fitted  # every step the same size: the split is not determined
    assert m(4) == pytest.approx(0.02)  # ... but the mean step is known
    m.observe(8, 0.03)
    assert m.fitted


def test_memory_bound_steps_keep_long_drafts() -> None:
    verify = _model(0.050, 0.0005, [1, 4, 9, 17, 2, 6])  # weights dominate: a token is cheap
    probs = [0.9, 0.8, 0.6, 0.4, 0.2, 0.1]
    assert plan_drafts([probs], 1, verify, StepCostModel()) == [6]


def test_compute_bound_steps_back_off() -> None:
    verify = _model(0.0, 0.001, [32, 40, 64, 48, 90])  # every token costs the same: no free lunch
    decode = _model(0.0, 0.001, [32, 33, 31, 32])
    probs = [[0.9, 0.5, 0.2]] * 32
    assert plan_drafts(probs, 32, verify, decode) == [0] * 32


def test_a_slower_verify_path_than_decoding_turns_drafting_off() -> None:
    verify = _model(0.040, 0.001, [2, 5, 9, 17])
    decode = _model(0.010, 0.001, [1, 1, 2, 1])
    assert plan_drafts([[0.5, 0.3]], 1, verify, decode) == [0, 0][:1]


def test_an_unfitted_verify_model_keeps_whole_drafts() -> None:
    assert plan_drafts([[0.1, 0.05], [0.2]], 2, StepCostModel(), StepCostModel()) == [2, 1]


def test_drafts_are_cut_at_prefixes_in_order_of_promise() -> None:
    verify = _model(0.010, 0.002, [1, 3, 5, 8, 13])
    keep = plan_drafts([[0.95, 0.9, 0.05], [0.3, 0.2]], 2, verify, StepCostModel())
    assert keep[0] == 2 and keep[1] <= 1


def test_calibration_scales_the_drafter_to_what_it_delivers() -> None:
    cal = AcceptanceCalibration()
    for _ in range(20):
        cal.record([1.0, 1.0, 1.0, 1.0], 1)  # promised 4, delivered 1
    adjusted = cal.adjust([1.0, 0.5])
    assert adjusted[0] == pytest.approx(0.27, abs=0.02)
    assert adjusted[1] == pytest.approx(adjusted[0] / 2)
