"""KV budget bookkeeping, and the legato policy keeping admitted KV within capacity."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from legato.scheduler.admission import KVBudget, SharedParts
from legato.scheduler.baselines import POLICIES
from legato.scheduler.events import Event
from legato.scheduler.legato_policy import ACTIVE, Legato
from legato.scheduler.policy import ClusterView, Decision
from legato.sim import SimConfig, simulate
from tests.sim.helpers import agent_workload, map_reduce_workload


def test_footprints_and_shared_parts_are_summed_once() -> None:
    b = KVBudget(horizons=2, low=0.5, high=0.8)
    b.set_capacity([1000.0])
    b.admit("r1", 0, 100.0, [("sys", 200.0)], [100.0, 150.0])
    b.admit("r2", 0, 50.0, [("sys", 200.0)], [50.0, 90.0])
    assert b.current[0] == pytest.approx(350.0)  # sys counted once
    assert b.used[0] == pytest.approx([350.0, 440.0])
    assert b.shared_cost(0, [("sys", 200.0), ("other", 30.0)]) == pytest.approx(30.0)
    assert b.room(0) == pytest.approx(500.0 - 440.0)
    assert b.fits(0, [60.0, 60.0])
    assert not b.fits(0, [60.0, 61.0])
    b.update("r1", 400.0, [400.0, 420.0])
    assert b.overflow(0) == pytest.approx(650.0 - 800.0)
    b.release("r1")
    b.release("r2")
    assert b.current[0] == pytest.approx(0.0)
    assert b.used[0] == pytest.approx([0.0, 0.0])
    assert not b.holds("r1")


def test_fits_without_runs_frees_their_projections_at_every_horizon() -> None:
    b = KVBudget(horizons=2, low=1.0, high=1.0, safety=0.0)
    b.set_capacity([1000.0])
    b.admit("a", 0, 300.0, [], projected=[300.0, 700.0])
    b.admit("b", 0, 300.0, [], projected=[300.0, 300.0])
    assert b.peak_of("a") == 700.0 and b.peak_of("gone") == 0.0
    need = [400.0, 400.0]
    assert not b.fits(0, need)
    assert not b.fits(0, need, without=["b"])  # a's growth still leaves no room at horizon 1
    assert b.fits(0, need, without=["a"])
    assert b.fits(0, need, without=["a", "b", "gone"])  # a run not admitted frees nothing
    assert b.used[0] == [600.0, 1000.0]  # asking changed nothing


def test_variance_keeps_headroom() -> None:
    b = KVBudget(horizons=1, low=1.0, high=1.0, safety=2.0)
    b.set_capacity([1000.0])
    b.admit("r1", 0, 500.0, [], [500.0], [100.0**2])
    # mean 500 + 2 * std 100: 300 left for a certain program, less for an uncertain one
    assert b.fits(0, [300.0])
    assert not b.fits(0, [301.0])
    assert not b.fits(0, [250.0], [100.0**2])


def test_bad_thresholds_and_double_admission_are_refused() -> None:
    with pytest.raises(ValueError, match="low <= high"):
        KVBudget(low=0.9, high=0.5)
    with pytest.raises(ValueError, match="horizons"):
        KVBudget(horizons=0)
    b = KVBudget()
    b.set_capacity([100.0])
    b.admit("r", 0, 1.0, [])
    with pytest.raises(ValueError, match="already admitted"):
        b.admit("r", 0, 1.0, [])
    with pytest.raises(ValueError, match="no capacity set"):
        KVBudget().admit("x", 0, 1.0, [])
    b3 = KVBudget(horizons=3)
    b3.set_capacity([100.0])
    with pytest.raises(ValueError, match="one projection per horizon"):
        b3.admit("x", 0, 1.0, [], [1.0, 2.0])
    assert not b3.holds("x")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["admit", "update", "release"]), st.integers(0, 5), st.floats(0, 500)),
        max_size=60,
    )
)
def test_incremental_sums_match_a_recount(ops: list[tuple[str, int, float]]) -> None:
    b = KVBudget(horizons=2)
    b.set_capacity([1e4, 1e4])
    held: dict[str, tuple[int, float, str]] = {}
    for op, i, tokens in ops:
        run = f"r{i}"
        if op == "admit" and run not in held:
            replica, key = i % 2, f"sys{i % 3}"
            b.admit(run, replica, tokens, [(key, 100.0)])
            held[run] = (replica, tokens, key)
        elif op == "update" and run in held:
            b.update(run, tokens)
            held[run] = (held[run][0], tokens, held[run][2])
        elif op == "release":
            b.release(run)
            held.pop(run, None)
    for replica in (0, 1):
        mine = [v for v in held.values() if v[0] == replica]
        expect = sum(t for _, t, _ in mine) + 100.0 * len({k for _, _, k in mine})
        assert b.current[replica] == pytest.approx(expect, abs=1e-6)
        assert b.used[replica] == pytest.approx([expect, expect], abs=1e-6)


class _Watched(Legato):
    """Legato, checking after every event that the footprint of its active programs stays
    within each replica's capacity whenever it has more than one (a pause can fix that), or
    the engine still has free blocks for the excess (the footprint is an estimate: pausing
    then would throw KV away for nothing)."""

    def __init__(self) -> None:
        super().__init__()
        self.checked = 0

    def on_event(self, event: Event, now: float, view: ClusterView) -> list[Decision]:
        out = list(super().on_event(event, now, view))
        for replica in range(self.budget.replicas):
            active = [r for r in self._runs.values() if r.state == ACTIVE and r.replica == replica]
            if len(active) > 1:  # one program alone may need it all (its output reserve is a guess)
                rv = view.replica(replica)
                slack = rv.free_blocks * rv.block_size
                assert self.budget.current[replica] <= self.budget.capacity[replica] + slack + 1e-6
                self.checked += 1
        return out


@pytest.mark.parametrize("replicas", [1, 2])
def test_active_footprint_never_exceeds_capacity(replicas: int) -> None:
    policy = _Watched()
    cfg = SimConfig(kv_blocks=1500, max_num_seqs=32, replicas=replicas)
    out = simulate(agent_workload(16, seed=5), policy, cfg, concurrency=16, check=True)
    assert len(out.programs) == 16
    assert policy.checked > 0
    out = simulate(map_reduce_workload(8), _Watched(), cfg, concurrency=8, check=True)
    assert len(out.programs) == 8


def test_registered_under_its_name() -> None:
    assert isinstance(POLICIES["legato"](), Legato)


def test_shared_parts_count_each_part_once_while_a_program_holds_it() -> None:
    parts = SharedParts()
    schema_a, schema_b = ("prefix", "t0", "sql", 4000), ("prefix", "t0", "sql", 3000)
    parts.add([(schema_a, 4000.0)])
    parts.add([(schema_a, 4000.0), (schema_b, 3000.0)])
    assert parts.tokens == 7000.0
    parts.remove([schema_a])
    assert parts.tokens == 7000.0  # the second program still reads schema a
    parts.remove([schema_a, schema_b])
    parts.remove([schema_b])  # a part no program holds: nothing to take away
    assert parts.tokens == 0.0


_SCHEMAS = [("s1", 100.0), ("s2", 250.0), ("s3", 400.0)]
_PROGRAM_PARTS = st.lists(st.sampled_from(_SCHEMAS), max_size=3, unique=True)  # one program's parts


@given(st.lists(_PROGRAM_PARTS, max_size=12), st.randoms(use_true_random=False))
def test_shared_parts_are_the_distinct_parts_of_the_programs_holding_them(
    programs: list[list[tuple[str, float]]], rng: random.Random
) -> None:
    parts = SharedParts()
    for program in programs:
        parts.add(program)
    running = list(programs)
    rng.shuffle(running)
    while running:
        distinct = {key: size for program in running for key, size in program}
        assert parts.tokens == pytest.approx(sum(distinct.values()))
        parts.remove(key for key, _ in running.pop())
    assert parts.tokens == 0.0
