"""Weighted virtual token counters."""

from __future__ import annotations

import pytest

from legato.scheduler.fair_share import FairShare


def test_counters_grow_by_weighted_cost_divided_by_weight() -> None:
    fs = FairShare({"a": 2.0, "b": 1.0})
    fs.program_started("a")
    fs.program_started("b")
    fs.charge("a", 100, 50)  # (100 + 2*50) / 2
    fs.charge("b", 100, 50)  # (100 + 2*50) / 1
    assert fs.counter("a") == pytest.approx(100.0)
    assert fs.counter("b") == pytest.approx(200.0)
    assert fs.pick(["a", "b"]) == "a"
    assert fs.weight("unknown") == 1.0


def test_pick_breaks_ties_by_name_and_needs_a_tenant() -> None:
    fs = FairShare()
    assert fs.pick(["b", "a"]) == "a"
    with pytest.raises(ValueError, match="at least one tenant"):
        fs.pick([])


def test_returning_tenant_is_lifted_to_the_active_minimum() -> None:
    fs = FairShare()
    fs.program_started("a")
    fs.program_started("b")
    fs.charge("a", 1000, 0)
    fs.charge("b", 3000, 0)
    fs.program_finished("a")  # a leaves; b keeps being served
    fs.charge("b", 2000, 0)
    assert fs.active_min() == pytest.approx(5000.0)
    fs.program_started("a")  # a returns with 1000: lifted to 5000, no hoarded credit
    assert fs.counter("a") == pytest.approx(5000.0)
    fs.program_started("c")  # a brand-new tenant starts at the minimum too
    assert fs.counter("c") == pytest.approx(5000.0)


def test_a_tenant_ahead_of_the_minimum_keeps_its_counter() -> None:
    fs = FairShare()
    fs.program_started("a")
    fs.charge("a", 9000, 0)
    fs.program_finished("a")
    fs.program_started("b")
    fs.program_started("a")
    assert fs.counter("a") == pytest.approx(9000.0)
    assert fs.counter("b") == 0.0


def test_only_the_last_program_makes_a_tenant_inactive() -> None:
    fs = FairShare()
    fs.program_started("a")
    fs.program_started("a")
    fs.program_finished("a")
    assert fs.active_min() == 0.0
    fs.program_finished("a")
    assert fs.active_min() is None


@pytest.mark.parametrize("weight", [0.0, -1.0, float("nan")])
def test_bad_weight_is_refused_by_name(weight: float) -> None:
    with pytest.raises(ValueError, match="tenant 'x'"):
        FairShare({"x": weight})


def test_served_counts_delivered_service_only_and_lifts_a_returning_tenant() -> None:
    fs = FairShare({"a": 2.0})
    fs.program_started("a")
    fs.prepay("a", 1000.0)  # committed, not delivered: the counter moves, `served` does not
    fs.serve("a", 100, 50)  # (100 + 2*50) / 2
    assert fs.served["a"] == pytest.approx(100.0)
    fs.program_started("b")  # arrives while a is active: starts at a's delivered service
    assert fs.served["b"] == pytest.approx(100.0)
