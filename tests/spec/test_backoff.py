"""The back-off rule: a fitted step cost model, and drafts kept only while they raise the
expected tokens per second of the step."""

from __future__ import annotations

import pytest

from legato.spec.backoff import AcceptanceCalibration, StepCostModel, plan_drafts


def _model(per_step: float, per_token: float, sizes: list[int]) -> StepCostModel:
    m = StepCostModel()
    for n in [*sizes, *sizes]:  # a size's first step is warm-up (not used)
        m.observe(n, per_step + per_token * n)
    return m


def _curve(costs: dict[int, float]) -> StepCostModel:
    m = StepCostModel()
    for n, t in costs.items():
        m.observe(n, t)  # warm-up (not used)
        m.observe(n, t)
    return m


def test_the_cost_model_learns_each_size_and_interpolates_between() -> None:
    m = _model(0.010, 0.001, [1, 5, 3, 17, 9, 2, 12])
    assert m.fitted
    for n in (1, 2, 3, 5, 9, 12, 17):
        assert m(n) == pytest.approx(0.010 + 0.001 * n)
    assert m(10) == pytest.approx(0.020)  # between 9 and 12
    assert m(7) == pytest.approx(0.017)


def test_the_cost_model_keeps_a_curve_a_line_cannot() -> None:
    # the CPU's small matrix products: 2 and 3 rows cost more than 4; large steps grow slowly
    m = _curve({1: 1.0, 2: 2.0, 3: 2.9, 4: 1.6, 8: 1.8, 16: 2.5})
    assert m(3) > m(4) and m(2) == pytest.approx(2.0) and m(4) == pytest.approx(1.6)
    assert m(12) == pytest.approx(2.15)


def test_unmeasured_large_steps_are_priced_at_the_average_cost_per_token() -> None:
    m = _curve({1: 1.0, 4: 2.0})
    assert m(8) == pytest.approx(4.0)  # T(4) / 4 per token: never cheaper than measured
    assert m(0.5) == pytest.approx(1.0)


def test_large_steps_share_buckets_and_old_steps_fade() -> None:
    m = StepCostModel(memory=4)
    m.observe(100, 9.0)  # warm-up
    for _ in range(20):
        m.observe(100, 1.0)
    for _ in range(20):
        m.observe(104, 2.0)  # same quarter-octave bucket: the average moves to the new steps
    ((n, t),) = m.sizes()
    assert n == pytest.approx(104, abs=0.1) and t == pytest.approx(2.0, abs=0.01)


def test_the_cost_model_skips_warm_up_and_needs_varied_steps() -> None:
    m = StepCostModel()
    m.observe(4, 10.0)  # the first step pays one-time costs: not used
    assert not m.has_data
    for _ in range(5):
        m.observe(4, 0.02)
    assert not m.fitted  # every step the same size: no shape yet
    assert m(4) == pytest.approx(0.02)  # ... but the step is known
    m.observe(8, 0.09)  # a new size's first step: not used either
    assert not m.fitted and m(8) == pytest.approx(0.04)  # priced from the measured size
    m.observe(8, 0.03)
    assert m.fitted and m(8) == pytest.approx(0.03)


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


def test_the_plan_looks_past_a_costly_size_to_a_cheaper_larger_one() -> None:
    # 2- and 3-token steps cost more than a 4-token one: a marginal rule stops at the first
    # token; the best k over the whole curve verifies three
    decode = _curve({1: 1.0})
    verify = _curve({2: 2.0, 3: 2.9, 4: 1.6, 5: 1.7})
    assert plan_drafts([[0.6, 0.4, 0.3]], 1, verify, decode) == [3]


def test_drafting_only_when_it_beats_plain_decoding() -> None:
    decode = _curve({1: 1.0})
    verify = _curve({2: 1.2, 3: 1.3, 4: 1.4})
    assert plan_drafts([[0.1]], 1, verify, decode) == [0]  # 1.1 / 1.2 < 1 / 1
    assert plan_drafts([[0.3]], 1, verify, decode) == [1]  # 1.3 / 1.2 > 1 / 1
    assert plan_drafts([[0.9, 0.8, 0.05]], 1, verify, decode) == [2]  # 2.7 / 1.3 beats 2.75 / 1.4


def test_calibration_scales_the_drafter_to_what_it_delivers() -> None:
    cal = AcceptanceCalibration()
    for _ in range(20):
        cal.record([1.0, 1.0, 1.0, 1.0], 1)  # promised 4, delivered 1
    adjusted = cal.adjust([1.0, 0.5])
    assert adjusted[0] == pytest.approx(0.27, abs=0.02)
    assert adjusted[1] == pytest.approx(adjusted[0] / 2)


def test_the_cost_model_says_which_sizes_are_measured_not_extrapolated() -> None:
    m = StepCostModel()
    assert not m.covers(1)
    m = _model(0.010, 0.001, [4, 8])
    assert m.covers(1) and m.covers(8)  # below the largest measured size: interpolated or floored
    assert not m.covers(9) and not m.covers(32)  # above: extrapolated
    m = _model(0.010, 0.001, [32])
    assert m.covers(31) and not m.covers(40)  # 32..38 share a bucket; 31 is below it
