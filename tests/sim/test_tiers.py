"""Simulated KV tiers (`--tiers host,redis`): bounds, invariants, determinism, and the two claims
a tier must live up to: it cuts recomputed prefill under pressure, and a slow one never hurts."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

import pytest

from legato.bench.metrics import summarize
from legato.scheduler.baselines.fcfs_lru import FcfsLru
from legato.scheduler.events import ToolFinished
from legato.scheduler.policy import ClusterView, Decision, Prefetch
from legato.sim import SimConfig, simulate
from legato.sim.hardware import tier_specs
from legato.sim.outcome import RunOutcome
from tests.sim.helpers import agent_workload

# Llama-3.1-8B: a 16-token block is 2 MiB, so host:2 holds ~950 blocks and redis:4 ~1900.
TIGHT = SimConfig(kv_blocks=2400, max_num_seqs=32)
TIERED = dataclasses.replace(TIGHT, tiers=("host:2", "redis:4"))
WORKLOAD = agent_workload(24, seed=3, steps=(4, 8))
CONC = 16


def _run(cfg: SimConfig, policy: str = "fcfs-lru", check: bool = True) -> RunOutcome:
    return simulate(WORKLOAD, policy, cfg, concurrency=CONC, check=check)


@pytest.mark.parametrize("policy", ["fcfs-lru", "continuum", "thunderagent", "oracle-evict"])
def test_every_program_completes_within_tier_bounds(policy: str) -> None:
    out = _run(TIERED, policy)  # check=True: pool and tier invariants after every step
    assert len(out.programs) == len(WORKLOAD.programs)
    assert all(p.calls == len(w.calls) for p, w in zip(out.programs, WORKLOAD.programs, strict=True))
    for name in ("host", "redis"):
        assert 0 < out.extra[f"tier_{name}_peak_blocks"] <= out.extra[f"tier_{name}_capacity_blocks"]


def test_tiers_cut_recompute_under_pressure() -> None:
    plain, tiered = _run(TIGHT), _run(TIERED)
    assert tiered.extra["tier_host_hit_tokens"] > 0
    assert tiered.extra["tier_host_offloaded_bytes"] > 0
    assert tiered.extra["tier_redis_offloaded_bytes"] > 0  # the host tier overflowed into Redis
    assert tiered.prefill_tokens_computed < plain.prefill_tokens_computed
    assert tiered.cached_prompt_tokens > plain.cached_prompt_tokens


@pytest.mark.parametrize("tiers", [("host:2", "redis:4"), ("host:64", "redis:4"), ("host:0.5", "redis:64")])
@pytest.mark.parametrize("policy", ["fcfs-lru", "continuum"])
def test_bytes_loaded_from_a_tier_never_exceed_bytes_written_to_it(
    tiers: tuple[str, str], policy: str
) -> None:
    """A block is loaded from the tier that holds it: Redis serves only what was written to it
    (issue 13: with a roomy host tier the report showed Redis loads and 0 bytes offloaded)."""
    out = _run(dataclasses.replace(TIGHT, tiers=tiers), policy, check=False)
    for name in ("host", "redis"):
        loaded = out.extra[f"tier_{name}_loaded_bytes"]
        assert loaded <= out.extra[f"tier_{name}_offloaded_bytes"], (name, out.extra)
    if tiers[0] == "host:64":  # the host never overflows: nothing reaches Redis, nothing comes back
        assert out.extra["tier_redis_offloaded_bytes"] == out.extra["tier_redis_loaded_bytes"] == 0
        assert out.extra["tier_host_loaded_bytes"] > 0


def test_tiers_are_deterministic() -> None:
    a = json.dumps(dataclasses.asdict(summarize(_run(TIERED, check=False))), sort_keys=True)
    b = json.dumps(dataclasses.asdict(summarize(_run(TIERED, check=False))), sort_keys=True)
    assert a == b


def test_slow_redis_is_never_loaded_and_changes_nothing() -> None:
    """DESIGN.md: a remote tier can be slower than recompute. The cost model then always
    recomputes, so the run is exactly the untiered one (offloads use the network, not the GPU)."""
    plain = _run(TIGHT)
    slow = _run(dataclasses.replace(TIGHT, tiers=("redis-slow:4",)))
    assert slow.extra["tier_redis_offloaded_bytes"] > 0  # it was offered the KV...
    assert slow.extra["tier_redis_hit_tokens"] == 0  # ...and never worth loading
    assert slow.extra["tier_load_stall_s"] == 0
    assert slow.prefill_tokens_computed == plain.prefill_tokens_computed
    assert summarize(slow).mean_tct_s <= summarize(plain).mean_tct_s


def test_host_in_front_of_slow_redis_still_helps() -> None:
    plain = _run(TIGHT)
    mixed = _run(dataclasses.replace(TIGHT, tiers=("host:2", "redis-slow:4")))
    assert mixed.extra["tier_redis_hit_tokens"] == 0
    assert mixed.prefill_tokens_computed < plain.prefill_tokens_computed


class _PrefetchOnToolDone(FcfsLru):
    """fcfs-lru that asks for the run's KV back when its tool finishes (tests prefetch)."""

    name = "fcfs-lru+prefetch"

    def on_event(self, event: object, now: float, view: ClusterView) -> Sequence[Decision]:
        out = list(super().on_event(event, now, view))  # type: ignore[arg-type]
        if isinstance(event, ToolFinished):
            out.append(Prefetch(event.run_id, 0))
        return out


def test_prefetch_brings_kv_back() -> None:
    out = simulate(WORKLOAD, _PrefetchOnToolDone(), TIERED, concurrency=CONC, check=True)
    assert len(out.programs) == len(WORKLOAD.programs)
    assert out.extra["prefetches"] > 0
    assert out.extra["tier_host_prefetched_bytes"] + out.extra["tier_redis_prefetched_bytes"] > 0
    assert "prefetches_ignored" in out.extra and out.extra["prefetches_ignored"] == 0


def test_untiered_run_reports_no_tier_counters() -> None:
    out = _run(TIGHT, check=False)
    assert not any(k.startswith("tier_") for k in out.extra)


@pytest.mark.parametrize(
    ("tiers", "match"),
    [
        (["disk"], "unknown tier"),
        (["redis", "host"], "fastest first"),
        (["host", "host"], "listed twice"),
        (["host:lots"], "number of GB"),
        (["host:-1"], ">= 0"),
    ],
)
def test_bad_tiers_name_what_to_fix(tiers: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tier_specs(tiers)


def test_bench_reports_tier_traffic() -> None:
    from legato.bench.report import render_tier_table
    from legato.bench.runner import run_bench

    common = {"programs": 6, "concurrency": 6, "workload_params": {"steps_min": "3", "steps_max": "4"}}
    tiered = run_bench("swe", ["fcfs-lru"], tiers=["host:1", "redis:2"], **common)  # type: ignore[arg-type]
    plain = run_bench("swe", ["fcfs-lru"], **common)  # type: ignore[arg-type]
    assert tiered["tiers"] == ["host:1", "redis:2"]
    extra = tiered["policies"]["fcfs-lru"]["extra"]
    assert {"tier_host_offloaded_bytes", "tier_redis_hit_tokens", "tier_load_stall_s"} <= set(extra)
    table = render_tier_table(tiered)
    assert table is not None and len(table.rows) == 1
    assert render_tier_table(plain) is None


def test_pool_offloads_suffix_first_and_stays_stratified() -> None:
    from legato.sim.hardware import TierSpec
    from legato.sim.kv_pool import KVPool
    from legato.sim.tiers import SimTiers
    from legato.sim.workload import Segment

    bs, bpt = 16, 1000.0
    block = bs * bpt
    pool = KVPool(capacity_blocks=4, block_size=bs)
    host = TierSpec("host", bandwidth=1e9, round_trip_s=1e-5, capacity_bytes=2 * block)
    redis = TierSpec("redis", bandwidth=1e8, round_trip_s=1e-3, capacity_bytes=4 * block)
    pool.tiers = tiers = SimTiers([host, redis], bs, bpt, pool._key)
    a = pool.extend([], [Segment(1, 2 * bs), Segment(2, 2 * bs)])
    pool.acquire(a, run=0)
    pool.allocate(4)
    pool.commit(a, 0, 4 * bs)
    pool.release(a, now=1.0)
    pool.allocate(4)  # someone else needs the whole device: all of `a` goes down
    pool.check(private_blocks=4)
    assert [(n.cached, n.h, n.rd) for n in a] == [(0, 2, 0), (0, 0, 2)]  # host keeps the prefix
    reach, starts = tiers.reach(a, cap_blocks=4, device_tokens=0)
    assert [(cost.name, tokens) for cost, tokens in reach] == [("host", 2 * bs), ("redis", 4 * bs)]
    assert starts == [0, 2 * bs]  # exclusive tiers: Redis holds only what is past the host's span
    plan = tiers.plan(a, 0, 4, lambda s, e: (e - s) * 1.0)  # recompute is very slow: load it all
    assert plan.loads == (("host", 0, 2 * bs), ("redis", 2 * bs, 4 * bs))
    pool.free(4)
    pool.acquire(a, run=0)
    pool.allocate(4)
    pool.commit(a, 0, 4 * bs)  # the load lands: blocks leave their tiers
    assert [(n.cached, n.h, n.rd) for n in a] == [(2, 0, 0), (2, 0, 0)]
    assert tiers.by_slot[0].used == tiers.by_slot[1].used == 0
    pool.release(a, now=2.0)
    pool.check(private_blocks=0)
