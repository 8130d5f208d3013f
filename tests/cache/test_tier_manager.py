"""Tier manager: bounded write queue that drops instead of blocking, load-vs-recompute from
measured costs, prefetch from Redis into the host tier, host pins."""

from __future__ import annotations

import math

from legato.cache.host_tier import HostTier
from legato.cache.redis_tier import RedisTier, RedisTierConfig
from legato.cache.tier_manager import TierManager
from tests.cache.kv import BLOCK, FMT, chain


def test_writes_are_dropped_not_waited_for_under_backpressure() -> None:
    host = HostTier(1 << 20)
    tm = TierManager(FMT, BLOCK, host=host, queue_size=2)
    with host._lock:  # a stalled tier: the writer thread blocks inside its first put
        results = [tm.offload(b, None, i, "t", math.inf) for i, b in enumerate(chain(6))]
    assert not all(results) and tm.stats.dropped_writes >= 3
    assert tm.flush()
    assert tm.host is not None and len(tm.host) == sum(results)
    tm.close()


def test_slow_tier_means_recompute_fast_tier_means_load() -> None:
    blocks = chain(8)
    hashes = [b.block_hash for b in blocks]
    host = HostTier(1 << 20)
    host.put(blocks, None, 0, "t", math.inf)
    slow_prefill = TierManager(FMT, BLOCK, host=host, prefill_s=lambda s, e: 1.0 * (e - s))
    assert slow_prefill.fetch(hashes, 0) == blocks
    assert slow_prefill.stats.host_loaded_tokens == 8 * BLOCK
    fast_prefill = TierManager(FMT, BLOCK, host=host, prefill_s=lambda s, e: 1e-12 * (e - s))
    assert fast_prefill.fetch(hashes, 0) == []
    assert fast_prefill.stats.recompute_decisions == 1
    # blocks already on the device are never loaded: the plan starts after them
    assert slow_prefill.fetch(hashes, 5) == blocks[5:]


def test_redis_load_and_prefetch_into_host(redis_url: str) -> None:
    blocks = chain(8)
    hashes = [b.block_hash for b in blocks]
    redis_tier = RedisTier(RedisTierConfig(url=redis_url, chunk_blocks=2), FMT)
    assert redis_tier.put([blocks[i : i + 2] for i in range(0, 8, 2)]) == 4
    tm = TierManager(FMT, BLOCK, host=HostTier(1 << 20), redis=redis_tier, prefill_s=lambda s, e: e - s)
    assert tm.fetch(hashes, 3) == blocks[3:]  # chunk 1 starts before the device's end: sliced
    assert tm.stats.redis_loaded_tokens == 5 * BLOCK
    assert tm.prefetch(hashes, "t") and tm.flush()
    assert tm.host is not None and tm.host.reach(hashes) == 8
    pin = tm.pin(hashes, "t", ttl_s=60, hard=True)
    assert tm.host.pinned_bytes("t") == 8 * FMT.block_nbytes and tm.unpin(pin)
    tm.close()
