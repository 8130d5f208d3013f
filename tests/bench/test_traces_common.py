"""What the trace loaders share: prefix cuts, call durations fitted from a log's pacing."""

from __future__ import annotations

from pathlib import Path

import pytest

from legato.bench.traces import CallTime, PrefixCuts, TraceTiming, fit_call_time, time_field
from legato.cache.common_prefix import common_prefix


def test_prefix_cuts_are_where_texts_part() -> None:
    system = "S" * 100
    texts = [system + "task one", system + "task two", system + "other", "unrelated"]
    cuts = PrefixCuts(texts)
    assert cuts.cuts(texts[0], 0, len(texts[0])) == [100, 105]
    assert cuts.cuts(texts[2], 0, len(texts[2])) == [100]
    assert cuts.cuts(texts[0], 0, len(texts[0]), min_piece=10) == [100]  # "task " is too short a piece
    assert cuts.cuts(texts[3], 0, 9) == []
    assert common_prefix("a" * 10_000 + "x", "a" * 10_000 + "y") == 10_000


def test_call_time_is_the_longest_the_log_allows() -> None:
    # fixed + per_token * tokens <= gap for each pair; the fit maximises the summed durations.
    fit = fit_call_time([(10, 2.0), (100, 11.0), (50, 20.0)])
    assert fit.fixed_s == pytest.approx(1.0, abs=1e-6) and fit.per_token_s == pytest.approx(0.1, abs=1e-6)
    assert [fit.tool_gap_s(g, n) for n, g in [(10, 2.0), (100, 11.0), (50, 20.0)]] == pytest.approx(
        [0.0, 0.0, 14.0], abs=1e-5
    )
    assert fit_call_time([]) == CallTime() and fit_call_time([(5, 0.0)]) == CallTime()
    assert CallTime.from_rate(50.0).tool_gap_s(3.0, 100) == pytest.approx(1.0)


def test_timing_modes() -> None:
    assert TraceTiming.parse("trace", 2.0).arrivals([5.0, 6.0], 0) == [0.0, 2.0]
    assert TraceTiming.parse("burst", 1.0).arrivals([5.0, 6.0], 0) == [0.0, 0.0]
    poisson = TraceTiming.parse("poisson:4", 1.0)
    assert poisson.arrivals([0.0] * 3, 1) == poisson.arrivals([9.0] * 3, 1)
    with pytest.raises(ValueError, match="unknown arrival"):
        TraceTiming.parse("trace:3", 1.0)


def test_a_timestamp_is_a_number_in_the_files_unit_or_an_iso_date_time() -> None:
    row: dict[str, object] = {"us": 1_700_000_000_250_000, "iso": "2023-11-14T22:13:20.25Z"}
    assert time_field(Path("f"), 1, row, "us", 1_000_000.0) == pytest.approx(1_700_000_000.25)
    assert time_field(Path("f"), 1, row, "iso", 1_000_000.0) == pytest.approx(1_700_000_000.25)
    assert time_field(Path("f"), 1, row, "iso", 1.0) == pytest.approx(1_700_000_000.25)
    with pytest.raises(ValueError, match="f:1: 'bad' must be a number or an ISO-8601 date-time"):
        time_field(Path("f"), 1, {"bad": "soon"}, "bad", 1.0)
    with pytest.raises(ValueError, match="'bad' must be a number or an ISO-8601 date-time"):
        time_field(Path("f"), 1, {"bad": "2020-01-01T00:00:00\ud800"}, "bad", 1.0)
    with pytest.raises(ValueError, match="'old' must not be before 1970"):
        time_field(Path("f"), 1, {"old": "0001-01-01T00:00:00"}, "old", 1.0)
