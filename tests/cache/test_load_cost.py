"""plan_load: the one load-vs-recompute decision both the tier manager and the simulator use."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from legato.cache.load_cost import LoadPlan, TierCost, plan_load

HOST = TierCost("host", bandwidth_bytes_per_s=25e9, round_trip_s=20e-6)
REDIS = TierCost("redis", bandwidth_bytes_per_s=1.25e9, round_trip_s=500e-6)
KV_BYTES = 131072.0  # Llama-3.1-8B bytes per token


def linear_prefill(per_token_s: float) -> object:
    def prefill(start: int, end: int) -> float:
        assert 0 <= start <= end
        return (end - start) * per_token_s

    return prefill


def quadratic_prefill(a: float, b: float) -> object:
    """Linear GEMM term plus attention over the cached context (tokens attend all earlier ones)."""

    def prefill(start: int, end: int) -> float:
        assert 0 <= start <= end
        pairs = (end * (end + 1) - start * (start + 1)) / 2
        return a * (end - start) + b * pairs

    return prefill


def brute_force(device: int, tiers: list[tuple[TierCost, int]], bpt: float, prefill) -> float:  # type: ignore[no-untyped-def]
    """Every assignment of every break-point segment to any holding tier, costed independently."""
    horizon = max([device, *(n for _, n in tiers)])
    points = sorted({device, *(n for _, n in tiers if n > device)})
    best = math.inf
    for k in range(len(points)):
        segs = list(itertools.pairwise(points[: k + 1]))
        for choice in itertools.product(range(len(tiers)), repeat=len(segs)):
            total = 0.0
            prev = -1
            ok = True
            for (s, e), t in zip(segs, choice, strict=True):
                tier, held = tiers[t]
                if held < e or tier.bandwidth_bytes_per_s <= 0:
                    ok = False
                    break
                total += (e - s) * bpt / tier.bandwidth_bytes_per_s + (
                    tier.round_trip_s if t != prev else 0.0
                )
                prev = t
            if ok:
                r = points[k]
                best = min(best, total + (prefill(r, horizon) if r < horizon else 0.0))
    return best


def check_shape(plan: LoadPlan, device: int, tiers: list[tuple[TierCost, int]]) -> None:
    held = {t.name: n for t, n in tiers}
    cursor = device
    for name, start, end in plan.loads:
        assert start == cursor, "spans must be contiguous from the device prefix"
        assert end > start
        assert end <= held[name], "a tier can only supply tokens of its own prefix"
        cursor = end
    assert plan.recompute_from == cursor
    assert plan.recompute_from >= device
    assert plan.recompute_from <= max([device, *held.values()])


tier_st = st.builds(
    TierCost,
    name=st.sampled_from(["host", "redis", "disk"]),
    bandwidth_bytes_per_s=st.sampled_from([0.0, 1e8, 1.25e9, 25e9, 1e12]),
    round_trip_s=st.sampled_from([0.0, 20e-6, 5e-4, 0.05, 10.0]),
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, list[tuple[TierCost, int]]]:
    device = draw(st.integers(0, 4096))
    n = draw(st.integers(0, 3))
    names = ["host", "redis", "disk"][:n]
    tiers = [(draw(tier_st), draw(st.integers(0, 8192))) for _ in range(n)]
    return device, [
        (TierCost(name, t.bandwidth_bytes_per_s, t.round_trip_s), k)
        for name, (t, k) in zip(names, tiers, strict=True)
    ]


@settings(max_examples=300, deadline=None)
@given(
    scen=scenarios(),
    per_tok=st.sampled_from([1e-6, 1e-5, 1e-4, 1e-3]),
    attn=st.sampled_from([0.0, 1e-9, 1e-7]),
)
def test_plan_is_optimal_and_well_formed(
    scen: tuple[int, list[tuple[TierCost, int]]], per_tok: float, attn: float
) -> None:
    device, tiers = scen
    prefill = quadratic_prefill(per_tok, attn)
    plan = plan_load(device, tiers, KV_BYTES, prefill)  # type: ignore[arg-type]
    check_shape(plan, device, tiers)
    assert plan.estimated_s <= brute_force(device, tiers, KV_BYTES, prefill) * (1 + 1e-12) + 1e-15
    # The estimate is exactly what the plan costs.
    horizon = max([device, *(n for _, n in tiers)])
    by_name = {t.name: t for t, _ in tiers}
    loads = sum(by_name[name].load_s((e - s) * KV_BYTES) for name, s, e in plan.loads)
    recompute = prefill(plan.recompute_from, horizon) if plan.recompute_from < horizon else 0.0  # type: ignore[operator]
    assert plan.estimated_s == pytest.approx(loads + recompute, rel=1e-9, abs=1e-15)
    # Never worse than recomputing everything.
    full = prefill(device, horizon) if device < horizon else 0.0  # type: ignore[operator]
    assert plan.estimated_s <= full * (1 + 1e-12) + 1e-15


@settings(max_examples=200, deadline=None)
@given(scen=scenarios(), per_tok=st.sampled_from([1e-6, 1e-4]))
def test_useless_tier_is_never_chosen(scen: tuple[int, list[tuple[TierCost, int]]], per_tok: float) -> None:
    device, tiers = scen
    dead = [(TierCost("dead-bw", 0.0, 0.0), 100_000), (TierCost("dead-rtt", 1e15, 1e9), 100_000)]
    plan = plan_load(device, [*tiers, *dead], KV_BYTES, linear_prefill(per_tok))  # type: ignore[arg-type]
    assert all(name not in ("dead-bw", "dead-rtt") for name, _, _ in plan.loads)


def test_fast_host_tier_beats_recompute() -> None:
    plan = plan_load(0, [(HOST, 4096)], KV_BYTES, linear_prefill(1e-4))  # type: ignore[arg-type]
    assert plan.loads == (("host", 0, 4096),)
    assert plan.recompute_from == 4096
    assert plan.estimated_s == pytest.approx(HOST.load_s(4096 * KV_BYTES))


def test_slow_redis_loses_to_recompute() -> None:
    """DESIGN.md: a remote tier can be slower than recompute; then the plan recomputes."""
    slow = TierCost("redis", bandwidth_bytes_per_s=1e7, round_trip_s=0.05)
    plan = plan_load(0, [(slow, 4096)], KV_BYTES, linear_prefill(5e-5))  # type: ignore[arg-type]
    assert plan.loads == ()
    assert plan.recompute_from == 0
    assert plan.estimated_s == pytest.approx(4096 * 5e-5)


def test_host_then_redis_for_the_longer_tail() -> None:
    plan = plan_load(256, [(HOST, 1024), (REDIS, 8192)], KV_BYTES, linear_prefill(1e-3))  # type: ignore[arg-type]
    # Loading all of [256, 8192) from Redis is one round trip, but its bandwidth is 20x lower than
    # the host's, so the host supplies what it holds and Redis the rest.
    assert plan.loads == (("host", 256, 1024), ("redis", 1024, 8192))
    assert plan.recompute_from == 8192


def test_exclusive_tier_spans_are_loaded_only_from_the_tier_holding_them() -> None:
    """Exclusive tiers: the host holds [256, 1024) and Redis only [1024, 8192). Even with the
    host link queued (a huge round trip), its span is never priced as a Redis load."""
    busy_host = TierCost("host", bandwidth_bytes_per_s=25e9, round_trip_s=10.0)
    tiers = [(busy_host, 1024), (REDIS, 8192)]
    inclusive = plan_load(256, tiers, KV_BYTES, linear_prefill(1e-3))  # type: ignore[arg-type]
    assert inclusive.loads == (("redis", 256, 8192),)  # Redis is taken to hold the whole prefix
    plan = plan_load(256, tiers, KV_BYTES, linear_prefill(1e-3), [256, 1024])  # type: ignore[arg-type]
    assert all(start >= 1024 for name, start, _ in plan.loads if name == "redis")
    assert plan.recompute_from <= 1024 or ("host", 256, 1024) in plan.loads


def test_same_tier_spans_are_one_load() -> None:
    plan = plan_load(0, [(REDIS, 1024), (REDIS, 2048)], KV_BYTES, linear_prefill(1.0))  # type: ignore[arg-type]
    assert plan.recompute_from == 2048
    assert len(plan.loads) == 1  # the second "redis" holds both spans: no second round trip


def test_nothing_below_the_device() -> None:
    plan = plan_load(512, [(HOST, 256)], KV_BYTES, linear_prefill(1e-4))  # type: ignore[arg-type]
    assert plan == LoadPlan(loads=(), recompute_from=512, estimated_s=0.0)


@pytest.mark.parametrize(
    ("device", "tiers", "bpt", "match"),
    [
        (-1, [], KV_BYTES, "device_tokens"),
        (0, [(HOST, -5)], KV_BYTES, "token count"),
        (0, [], 0.0, "bytes_per_token"),
        (0, [(TierCost("x", -1.0, 0.0), 10)], KV_BYTES, "bandwidth_bytes_per_s"),
        (0, [(TierCost("x", 1.0, -1.0), 10)], KV_BYTES, "round_trip_s"),
    ],
)
def test_bad_input_names_the_field(
    device: int, tiers: list[tuple[TierCost, int]], bpt: float, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        plan_load(device, tiers, bpt, linear_prefill(1e-4))  # type: ignore[arg-type]
