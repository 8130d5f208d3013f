"""The hold-or-release rule and the engine costs it compares (no constants: engine facts)."""

from __future__ import annotations

import math

import pytest

from legato.scheduler.engine_rates import EngineRates
from legato.scheduler.legato_admission import gates
from legato.scheduler.pin_rule import hold_ttl, memory_price
from legato.scheduler.policy import ReplicaView, TierView
from legato.sim.cost_model import CostModel
from legato.sim.hardware import gpu
from legato.sim.models import model
from legato.tools.stats import LognormalFit


def _fit(median_s: float, sigma: float) -> LognormalFit:
    return LognormalFit(count=100, mean_s=median_s, mu=math.log(median_s), sigma=sigma)


def test_without_a_distribution_the_ttl_is_the_break_even_time() -> None:
    # ski rental: hold until holding has cost one recomputation
    assert hold_ttl(2.0, 0.5, None) == pytest.approx(4.0)


def test_the_ttl_covers_short_tools_and_releases_long_ones() -> None:
    # recompute 2 s, holding 0.1 s per s: break-even 20 s
    short = hold_ttl(2.0, 0.1, _fit(1.0, 0.5))
    assert short is not None and 1.0 < short <= 20.0
    assert hold_ttl(2.0, 0.1, _fit(200.0, 0.5)) is None  # a tool far past break-even: release
    assert hold_ttl(0.0, 0.1, _fit(1.0, 0.5)) is None  # nothing to save


def test_ttl_maximises_the_expected_gain() -> None:
    fit = _fit(5.0, 0.8)
    ttl = hold_ttl(3.0, 0.2, fit)
    assert ttl is not None

    def gain(tau: float) -> float:
        from statistics import NormalDist

        from legato.scheduler.pin_rule import _expected_min

        p = NormalDist().cdf((math.log(tau) - fit.mu) / fit.sigma)
        return 3.0 * p - 0.2 * _expected_min(fit, tau)

    assert gain(ttl) > 0
    best = max(gain(fit.quantile(q / 1000)) for q in range(1, 1000))  # a fine grid
    assert gain(ttl) >= best * 0.99  # the rule's grid is 1/64 of the quantiles


def test_memory_price_is_the_fill_fraction() -> None:
    assert memory_price(250.0, 1000.0) == 0.25
    assert memory_price(2000.0, 1000.0) == 1.0


def _sim_view(gpu_name: str, blocks: int, tiers: tuple[TierView, ...] = ()) -> ReplicaView:
    facts = CostModel(model("llama-3.1-8b"), gpu(gpu_name)).engine_facts()
    return ReplicaView(0, 16, blocks, blocks, 1, 0, *facts, tiers=tiers)


def test_recompute_comes_from_the_cost_model_and_a_tier_makes_reloading_cheaper() -> None:
    rates = EngineRates()
    h100, a10 = _sim_view("h100", 1000), _sim_view("a10", 1000)
    fast, slow = rates.recompute_s(h100, 0, 10_000), rates.recompute_s(a10, 0, 10_000)
    assert fast is not None and slow is not None
    assert slow > 5 * fast  # the A10 has an eighth of the H100's FLOP/s
    host = TierView("host", 25e9, 20e-6, 1e12, 1e12)
    tiered = rates.reload_s(_sim_view("a10", 1000, (host,)), 0, 10_000)
    assert tiered is not None and tiered < slow / 10
    full = TierView("host", 25e9, 20e-6, 1e12, 0.0)  # no room: recompute
    assert rates.reload_s(_sim_view("a10", 1000, (full,)), 0, 10_000) == pytest.approx(slow)


def test_without_declared_facts_costs_are_measured_from_call_timings() -> None:
    rates = EngineRates()
    view = ReplicaView(0, 16, 1000, 1000, 0, 0)
    assert rates.recompute_s(view, 0, 100) is None
    rates.call_started(0, 0.0)
    rates.call_finished(0, 2.0, 1000)  # 1000 tokens in 2 s of busy time
    assert rates.recompute_s(view, 0, 100) == pytest.approx(0.2)


def test_a_replica_that_never_drains_is_measured_while_it_is_busy() -> None:
    """A loaded engine may always have a call in flight: its costs must be known all the same."""
    rates = EngineRates()
    view = ReplicaView(0, 16, 1000, 1000, 0, 0)
    rates.call_started(0, 0.0)
    rates.call_started(0, 1.0)
    rates.call_finished(0, 2.0, 1000)  # one call still in flight: 1000 tokens in 2 s
    assert rates.recompute_s(view, 0, 100) == pytest.approx(0.2)
    rates.call_started(0, 2.5)
    rates.call_finished(0, 4.0, 1000)  # busy throughout: 2000 tokens in 4 s
    assert rates.recompute_s(view, 0, 100) == pytest.approx(0.2)
    rates.call_finished(0, 5.0, 500)  # drains: 2500 tokens in 5 s
    rates.call_started(0, 9.0)  # idle 5..9 s is not busy time
    rates.call_finished(0, 10.0, 500)
    assert rates.recompute_s(view, 0, 100) == pytest.approx(0.2)


def test_admission_gates_only_where_the_kv_pool_outweighs_the_weights() -> None:
    h100 = CostModel(model("llama-3.1-8b"), gpu("h100"))
    a10 = CostModel(model("llama-3.1-8b"), gpu("a10"))
    assert gates(_sim_view("h100", h100.kv_capacity_blocks(16)))  # 55 GB of KV vs 16 GB weights
    assert not gates(_sim_view("a10", a10.kv_capacity_blocks(16)))  # 4.5 GB of KV vs 16 GB
    assert gates(ReplicaView(0, 16, 1000, 1000, 0, 0))  # nothing known: gate
