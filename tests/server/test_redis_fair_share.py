"""Fair-share counters shared through one real redis-server by two instances (two store objects,
two `FairShare`s, exchanges called directly rather than on their one-second loop)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from legato.scheduler.fair_share import FairShare
from legato.server.store import RedisRunStore
from legato.server.store.redis_fair_share import RedisFairShare

Instance = tuple[FairShare, RedisFairShare]


@pytest.fixture
async def pair(redis_url: str) -> AsyncIterator[tuple[Instance, Instance]]:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    stores = [RedisRunStore(redis_url, prefix=prefix) for _ in range(2)]
    out = []
    for store in stores:
        await store.open()
        fair = FairShare({"heavy": 2.0, "light": 1.0})
        out.append((fair, RedisFairShare(store, fair)))
    try:
        yield out[0], out[1]
    finally:
        for store in stores:
            await store.close()


async def test_service_on_one_instance_orders_tenants_on_the_other(pair: tuple[Instance, Instance]) -> None:
    (fx, x), (fy, y) = pair
    for fair in (fx, fy):
        fair.program_started("heavy")
        fair.program_started("light")
    fx.charge("heavy", 300, 0)  # served on X: 300 / weight 2
    fy.charge("light", 100, 0)  # served on Y: 100 / weight 1
    assert fy.pick(["heavy", "light"]) == "heavy"  # Y alone would serve heavy next
    await x.exchange()
    await y.exchange()
    assert fy.counter("heavy") == pytest.approx(150.0) and fy.counter("light") == pytest.approx(100.0)
    assert fy.pick(["heavy", "light"]) == "light"
    await x.exchange()
    assert (fx.counter("heavy"), fx.counter("light")) == (fy.counter("heavy"), fy.counter("light"))


async def test_lifts_on_both_instances_do_not_add_up(pair: tuple[Instance, Instance]) -> None:
    (fx, x), (fy, y) = pair
    fx.program_started("heavy")
    fx.charge("heavy", 1000, 0)  # 500
    fx.serve("heavy", 1000, 0)
    await x.exchange()
    await y.exchange()
    for fair in (fx, fy):  # light arrives on both while heavy is active there: lifted to 500
        fair.program_started("heavy")
        fair.program_started("light")
        fair.charge("light", 10, 0)
        fair.serve("light", 10, 0)
    await x.exchange()
    await y.exchange()
    await x.exchange()
    # one lift to 500 plus both instances' charges, not two lifts
    assert fx.counter("light") == pytest.approx(520.0) and fy.counter("light") == pytest.approx(520.0)
    assert fy.served.get("light") == pytest.approx(520.0)
