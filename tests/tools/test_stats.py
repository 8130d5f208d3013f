"""Tool latency statistics: per tool, per tenant, lognormal fit, bounded memory."""

from __future__ import annotations

import math
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from legato.tools import ToolLatencyStats


def test_expected_latency_per_tool_and_tenant() -> None:
    priors = {"run_tests": 12.0}
    stats = ToolLatencyStats(prior=priors.get, min_tenant_samples=3)
    assert stats.expected_latency("run_tests") == 12.0  # prior before any sample
    assert stats.expected_latency("unknown") is None
    assert stats.quantile("run_tests", 0.9) is None

    for s in (1.0, 2.0, 3.0):
        stats.record("run_tests", s, tenant="fast")
    stats.record("run_tests", 30.0, tenant="slow")
    stats.record("run_tests", 34.0, tenant="slow")

    assert stats.expected_latency("run_tests") == pytest.approx(70.0 / 5)
    assert stats.expected_latency("run_tests", tenant="fast") == pytest.approx(2.0)
    # "slow" has 2 < 3 samples of its own: the tool-wide mean is used.
    assert stats.expected_latency("run_tests", tenant="slow") == pytest.approx(14.0)
    assert stats.expected_latency("run_tests", tenant="never-seen") == pytest.approx(14.0)
    stats.record("run_tests", 32.0, tenant="slow")
    assert stats.expected_latency("run_tests", tenant="slow") == pytest.approx(32.0)
    assert stats.count("run_tests") == 6 and stats.count("run_tests", "slow") == 3
    assert stats.tools() == ["run_tests"]


def test_lognormal_fit_on_known_sample() -> None:
    stats = ToolLatencyStats()
    logs = [0.0, 1.0, 2.0, 3.0]
    for x in logs:
        stats.record("grep", math.exp(x))
    fit = stats.fit("grep")
    assert fit is not None
    assert fit.count == 4
    assert fit.mu == pytest.approx(1.5)
    assert fit.sigma == pytest.approx(math.sqrt(5.0 / 3.0))
    assert fit.mean_s == pytest.approx(statistics.fmean(math.exp(x) for x in logs))
    assert stats.quantile("grep", 0.5) == pytest.approx(math.exp(1.5))
    # The 84.13% quantile of a normal is one sigma above the mean.
    assert stats.quantile("grep", 0.8413447) == pytest.approx(math.exp(1.5 + math.sqrt(5.0 / 3.0)), rel=1e-5)


def test_single_sample_and_zero_latency() -> None:
    stats = ToolLatencyStats()
    stats.record("noop", 0.0)
    fit = stats.fit("noop")
    assert fit is not None and fit.sigma == 0.0 and math.isfinite(fit.mu)
    assert stats.quantile("noop", 0.99) == pytest.approx(1e-6)


def test_bad_inputs_are_rejected() -> None:
    stats = ToolLatencyStats()
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="finite number"):
            stats.record("t", bad)
    with pytest.raises(ValueError, match="between 0 and 1"):
        stats.quantile("t", 1.0)
    with pytest.raises(ValueError):
        ToolLatencyStats(min_tenant_samples=0)


def test_memory_is_bounded() -> None:
    stats = ToolLatencyStats(max_tenants=3, max_tools=2, min_tenant_samples=1)
    for i in range(5):
        stats.record("t", 1.0 + i, tenant=f"tenant-{i}")
    assert [stats.count("t", f"tenant-{i}") for i in range(5)] == [0, 0, 1, 1, 1]
    stats.record("a", 1.0)
    stats.record("b", 1.0)
    assert stats.tools() == ["a", "b"]  # "t" was least recently updated


@given(st.lists(st.floats(min_value=1e-3, max_value=1e4), min_size=2, max_size=50))
def test_welford_matches_batch_statistics(samples: list[float]) -> None:
    stats = ToolLatencyStats()
    for s in samples:
        stats.record("t", s)
    fit = stats.fit("t")
    assert fit is not None
    logs = [math.log(s) for s in samples]
    assert fit.mu == pytest.approx(statistics.fmean(logs), abs=1e-9)
    assert fit.sigma == pytest.approx(statistics.stdev(logs), abs=1e-7)
    assert fit.mean_s == pytest.approx(statistics.fmean(samples), rel=1e-9)
