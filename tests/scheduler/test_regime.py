"""The gate-or-pack choice of a weight-bound replica (`legato.scheduler.regime`)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from legato.scheduler.admission import KVBudget
from legato.scheduler.engine_rates import EngineRates
from legato.scheduler.events import CallFinished, RunStarted
from legato.scheduler.legato_policy import Legato
from legato.scheduler.policy import Decision, Dispatch, ReplicaView, TierView
from legato.scheduler.regime import ThrashMeter, gate_cost
from tests.scheduler.test_legato_policy import _call

PREFILL_S = 1e-3  # seconds per recomputed token on the test replica


def _replica(tokens: int = 10_000) -> ReplicaView:
    """A weight-bound replica: its whole pool reads in 10 ms, the weights in 30 ms."""
    blocks = tokens // 16
    return ReplicaView(
        0,
        16,
        blocks,
        blocks,
        1,
        0,
        prefill_s_per_token=PREFILL_S,
        prefill_s_per_pair=0.0,
        decode_step_s=0.03,
        decode_s_per_ctx_token=0.01 / tokens,
    )


def test_counts_the_recompute_of_dropped_context_as_a_share_of_serving_time() -> None:
    meter = ThrashMeter()
    rates = EngineRates()
    meter.dispatched(0, 0.0)
    meter.call_finished("a", _replica(), rates, reused=4000.0, cached=4000.0)  # all resident
    meter.call_finished("a", _replica(), rates, reused=4000.0, cached=3990.0)  # within a block
    assert meter.lost_fraction(0, 10.0) == 0.0
    meter.call_finished("a", _replica(), rates, reused=4000.0, cached=1000.0)  # 3000 dropped
    assert meter.lost_fraction(0, 10.0) == pytest.approx(3000 * PREFILL_S / 10.0)


def test_a_context_the_policy_released_is_a_chosen_recompute_not_thrash() -> None:
    meter = ThrashMeter()
    meter.dispatched(0, 0.0)
    meter.released("a")
    meter.call_finished("a", _replica(), EngineRates(), reused=4000.0, cached=0.0)
    assert meter.lost_fraction(0, 10.0) == 0.0
    # only the call after the release: the next loss counts
    meter.call_finished("a", _replica(), EngineRates(), reused=4000.0, cached=0.0)
    assert meter.lost_fraction(0, 10.0) > 0.0


def test_gates_when_recompute_costs_more_than_the_memory_a_gate_leaves_unused() -> None:
    meter = ThrashMeter()
    budget = KVBudget(horizons=2, low=1.0, high=1.0, safety=0.0)
    budget.set_capacity([math.inf])
    # one admitted program holding 8000 tokens, projected to 10,000 next call: 20% unused
    budget.admit("a", 0, 8000.0, (), [8000.0, 10_000.0])
    meter.dispatched(0, 0.0)
    view = _replica()
    assert not meter.thrashing(0, 0.0, budget, view)
    # 20% less KV in a step that reads 30 ms of weights and up to 10 ms of KV: 15.8% fewer tokens/s
    assert gate_cost(0.2, view) == pytest.approx(1 - 0.8 * 0.04 / 0.038)
    meter.call_finished("b", view, EngineRates(), reused=1000.0, cached=0.0)  # 1 s lost
    assert not meter.thrashing(0, 10.0, budget, view)  # 10% of the time < 15.8%
    meter.call_finished("b", view, EngineRates(), reused=2000.0, cached=0.0)  # 3 s in all
    assert meter.thrashing(0, 10.0, budget, view)  # 30% > 15.8%


def test_without_the_cost_model_memory_counts_as_batch_share_one_for_one() -> None:
    assert gate_cost(0.2, dataclasses.replace(_replica(), decode_step_s=None)) == 0.2


def test_only_time_spent_packing_dilutes_the_recompute() -> None:
    # Gating stops the drops: time spent gated must not wear the measured loss of packing down
    # until the two regimes' mix looks even.
    meter = ThrashMeter()
    budget = KVBudget(horizons=2, low=1.0, high=1.0, safety=0.0)
    budget.set_capacity([math.inf])
    budget.admit("a", 0, 8000.0, (), [8000.0, 10_000.0])
    view = _replica()
    meter.dispatched(0, 0.0)
    meter.call_finished("b", view, EngineRates(), reused=3000.0, cached=0.0)  # 3 s lost in 10 s
    assert meter.thrashing(0, 10.0, budget, view)
    meter.call_finished("b", view, EngineRates(), reused=3000.0, cached=0.0)  # while gated
    assert meter.thrashing(0, 100.0, budget, view)  # still 3 s of 10 s packing
    assert meter.lost_fraction(0, 100.0) == pytest.approx(0.3)

    # 10 s packing, then gated until the last finished call at 100 s: 90 % of the time gated.
    assert meter.gated_share() == pytest.approx(0.9)


def test_the_gated_share_is_zero_before_any_call_and_while_packing() -> None:
    meter = ThrashMeter()
    assert meter.gated_share() == 0.0
    budget = KVBudget(horizons=2, low=1.0, high=1.0, safety=0.0)
    budget.set_capacity([math.inf])
    meter.dispatched(0, 0.0)
    assert not meter.thrashing(0, 10.0, budget, _replica())
    assert meter.gated_share() == 0.0


class _View:
    num_replicas = 1

    def replica(self, index: int) -> ReplicaView:
        return _replica()

    def cached_prefix_tokens(self, replica: int, call_id: str) -> int:
        return 0

    def resident_tokens(self, replica: int, run_id: str) -> int:
        return 0


def _start_three(policy: Legato, view: _View) -> list[Decision]:
    """Three 4000-token programs on a 10,000-token weight-bound pool: the engine packs."""
    out: list[Decision] = []
    for run in ("a", "b", "c"):
        policy.on_event(RunStarted(run, "agent", "t0"), 0.0, view)
        out += policy.on_event(_call(run, 0, 4000, tool=None), 0.0, view)
    return out


def test_a_weight_bound_replica_packs_until_it_is_seen_to_drop_contexts() -> None:
    policy = Legato()
    view = _View()
    out = _start_three(policy, view)
    assert [d.call_id for d in out if isinstance(d, Dispatch)] == ["a#0", "b#0", "c#0"]
    assert policy.budget.capacity == [math.inf]
    policy.on_event(CallFinished("a#0", "a", 4000, 100, 0, "stop"), 1.0, view)
    policy.on_event(_call("a", 1, 4200, tool=None), 1.0, view)
    # a's next call found none of its 4100-token context cached: ~4 s of 6 s recomputing
    policy.on_event(CallFinished("a#1", "a", 4200, 100, 0, "stop"), 6.0, view)
    assert policy.budget.capacity == [10_000.0]
    assert policy.stats()["legato_gated_share"] == 0.0  # gated from its last call on


def test_a_prompt_that_opens_with_other_prefix_parts_lost_nothing() -> None:
    # text2sql: the SQL-writing call opens with its own system prompt, not with the linking
    # call's context, although its prompt is longer; none of that context was ever reusable.
    policy = Legato()
    view = _View()
    _start_three(policy, view)
    policy.on_event(CallFinished("a#0", "a", 4000, 100, 0, "stop"), 1.0, view)
    policy.on_event(_call("a", 1, 4200, tool=None, reused=0), 1.0, view)
    policy.on_event(CallFinished("a#1", "a", 4200, 100, 0, "stop"), 6.0, view)
    assert policy.thrash.lost_fraction(0, 6.0) == 0.0
    assert policy.budget.capacity == [math.inf]
    # Only the part the driver says repeats the run's context counts: 1000 of it dropped.
    policy.on_event(_call("a", 2, 4400, tool=None, reused=2000), 6.0, view)
    policy.on_event(CallFinished("a#2", "a", 4400, 100, 1000, "stop"), 7.0, view)
    assert policy.thrash.lost_fraction(0, 7.0) == pytest.approx(1000 * PREFILL_S / 7.0)


def test_on_a_pool_that_fits_few_contexts_legato_keeps_up_with_thunderagent() -> None:
    # swe programs (contexts of 15-35k tokens) on an A10 (a 34.6k-token pool, weight-bound
    # decode): packing the engine thrashed (0.88x thunderagent's steps/min before the meter).
    from legato.bench.metrics import mean_tct_s, steps_per_min
    from legato.bench.workloads import build_workload
    from legato.sim import SimConfig, simulate

    config = SimConfig(gpu="a10", model="llama-3.1-8b")
    pool = config.cost_model().kv_capacity_blocks(config.block_size) * config.block_size
    built = build_workload("swe", 96, 0, {})
    fits = [p for p in built.programs if all(c.prompt_tokens + c.output_tokens <= pool for c in p.calls)]
    workload = dataclasses.replace(built, programs=tuple(fits[:24]))
    legato = simulate(workload, "legato", config, concurrency=16)
    thunder = simulate(workload, "thunderagent", config, concurrency=16)
    assert steps_per_min(legato) >= 0.97 * steps_per_min(thunder)
    assert mean_tct_s(legato) <= mean_tct_s(thunder)


def _tiered(tokens: int = 10_000) -> ReplicaView:
    """`_replica` with a host tier that loads a token in a tenth of its recompute time."""
    host = TierView("host", bandwidth=1e6, round_trip_s=0.0, capacity_bytes=1e9, free_bytes=1e9)
    return dataclasses.replace(_replica(tokens), kv_bytes_per_token=100.0, tiers=(host,))


def test_a_context_loaded_back_from_a_tier_costs_the_load() -> None:
    meter = ThrashMeter()
    meter.dispatched(0, 0.0)
    # 3000 tokens dropped from the device: 0.3 s from the host tier against 3 s of recompute
    meter.call_finished("a", _tiered(), EngineRates(), reused=4000.0, cached=1000.0)
    assert meter.lost_fraction(0, 10.0) == pytest.approx(3000 * 100.0 / 1e6 / 10.0)


class _TieredView(_View):
    """The run's context on the device, as the engine reports it: `on_device` tokens."""

    on_device = 0

    def replica(self, index: int) -> ReplicaView:
        return _tiered()

    def resident_tokens(self, replica: int, run_id: str) -> int:
        return self.on_device


def test_a_prefix_hit_from_a_tier_still_counts_what_the_device_dropped() -> None:
    # `CallFinished.cached_tokens` counts tokens loaded back from a tier as hits; the meter
    # takes what was on the device when the call arrived.
    policy = Legato()
    view = _TieredView()
    _start_three(policy, view)
    policy.on_event(CallFinished("a#0", "a", 4000, 100, 0, "stop"), 1.0, view)
    view.on_device = 1100  # 3000 of the 4100-token context went to the host tier
    policy.on_event(_call("a", 1, 4200, tool=None), 1.0, view)
    policy.on_event(CallFinished("a#1", "a", 4200, 100, 4100, "stop"), 6.0, view)
    assert policy.thrash.lost_fraction(0, 6.0) == pytest.approx(3000 * 100.0 / 1e6 / 6.0)


def test_shared_parts_that_overflow_the_pool_gate_without_any_loss_seen() -> None:
    meter = ThrashMeter()
    budget = KVBudget(horizons=2, low=1.0, high=1.0, safety=0.0)
    budget.set_capacity([math.inf])
    meter.dispatched(0, 0.0)
    assert meter.thrashing(0, 10.0, budget, _replica(), shared_overflow=True)
    assert meter.gated_share() == 0.0  # gated from 10 s, the last call seen
    assert not meter.thrashing(0, 20.0, budget, _replica())  # no loss measured: packs again
    assert meter.gated_share() == pytest.approx(0.5)


@pytest.mark.parametrize(("schemas", "gated"), [((4000, 4000, 4000), False), ((4000, 4001, 4002), True)])
def test_programs_on_more_schemas_than_the_pool_holds_are_gated_before_they_start(
    schemas: tuple[int, int, int], gated: bool
) -> None:
    # text2sql: each program's prompt opens with its database's schema, shared with the other
    # programs on that database. Three 4,000-token schemas do not fit a 10,000-token pool
    # together: packing all three programs would evict schemas programs read again.
    policy = Legato()
    view = _View()
    out = []
    for run, schema in zip(("a", "b", "c"), schemas, strict=True):
        policy.on_event(RunStarted(run, "agent", "t0"), 0.0, view)
        out += policy.on_event(_call(run, 0, schema + 500, tool=None, shared=schema), 0.0, view)
    assert policy.budget.capacity == ([10_000.0] if gated else [math.inf])
    started = [d.call_id for d in out if isinstance(d, Dispatch)]
    assert started == (["a#0", "b#0"] if gated else ["a#0", "b#0", "c#0"])


def test_text2sql_on_an_a10_gates_on_its_schemas_and_passes_the_matrix_bar() -> None:
    # The matrix cell text2sql/a10/c64/none (seed 2): 64 programs over 20 schemas of 3-9k
    # tokens on a 34.6k-token pool. Packing everything at once made Legato 1.14x
    # thunderagent's mean TCT; gating while the schemas overflow the pool wins both ratios.
    from legato.bench import matrix

    cell = matrix.plan(patterns=["text2sql/a10/c64/none"])[0]
    result = matrix.run_cell(cell, {}, seed=2)
    assert matrix.passes(result), result["cell"]
    assert result["legato_gated_share"] > 0.5
