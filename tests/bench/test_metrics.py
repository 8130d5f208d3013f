"""Metrics against hand-computed values."""

from __future__ import annotations

import dataclasses

import pytest

from legato.bench.metrics import jain_index, percentile, summarize
from tests.bench.outcomes import outcome


def test_summary_hand_computed() -> None:
    m = summarize(outcome())
    assert m.programs == 4 and m.llm_calls == 20
    assert m.mean_tct_s == 25.0
    assert m.p50_tct_s == 25.0  # halfway between 20 and 30
    assert m.p99_tct_s == pytest.approx(39.7)  # rank 2.97: 30 + 0.97 * 10
    assert m.steps_per_min == 20.0  # 20 calls in one minute
    assert m.prefix_hit_rate == 0.25
    assert m.engine_busy_frac == 0.75  # 90 s busy of 2 replicas x 60 s
    assert (m.preemptions, m.pauses, m.prefill_tokens_computed) == (7, 2, 3000)
    # normalized service: a 300/2 = 150, b 100/1 = 100 -> (250)^2 / (2 * (150^2 + 100^2))
    assert m.jain_index == pytest.approx(62500 / 65000)
    a, b = m.per_tenant["a"], m.per_tenant["b"]
    assert (a.programs, a.service, a.normalized_service, a.mean_tct_s, a.weight) == (
        2,
        300.0,
        150.0,
        15.0,
        2.0,
    )
    assert (b.programs, b.normalized_service, b.mean_tct_s) == (2, 100.0, 35.0)
    assert m.extra == {"reuse_mae_s": 0.25}


def test_degenerate_outcomes_do_not_divide_by_zero() -> None:
    empty = dataclasses.replace(
        outcome(), programs=[], makespan_s=0.0, prompt_tokens=0, service_by_tenant={}, tenant_weights={}
    )
    m = summarize(empty)
    assert (m.mean_tct_s, m.p99_tct_s, m.steps_per_min, m.prefix_hit_rate, m.engine_busy_frac) == (
        0,
        0,
        0,
        0,
        0,
    )
    assert m.jain_index == 1.0 and m.per_tenant == {}


def test_percentile_and_jain_edges() -> None:
    assert percentile([5.0], 99) == 5.0
    assert percentile([3.0, 1.0, 2.0], 0) == 1.0 and percentile([3.0, 1.0, 2.0], 100) == 3.0
    with pytest.raises(ValueError, match="percentile q"):
        percentile([1.0], 101)
    assert jain_index([1.0, 1.0, 1.0]) == 1.0
    assert jain_index([1.0, 0.0, 0.0, 0.0]) == 0.25
    assert jain_index([]) == 1.0


def test_bad_tenant_weight_is_named() -> None:
    bad = dataclasses.replace(outcome(), tenant_weights={"a": 0.0, "b": 1.0})
    with pytest.raises(ValueError, match=r"tenant 'a' has weight 0\.0"):
        summarize(bad)
