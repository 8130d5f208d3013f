"""Host tier: bounded, suffix before prefix, next use then LRU, pins and per-tenant quotas."""

from __future__ import annotations

import math

import pytest

from legato.cache.host_tier import HostTier, PinQuotaExceeded
from tests.cache.kv import FMT, chain

NB = FMT.block_nbytes


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 1.0  # every read is a new instant: LRU order is put order
        return self.t


def test_bounded_and_prefix_closed() -> None:
    tier = HostTier(capacity_bytes=4 * NB, clock=Clock())
    a = chain(3, start_token=0)
    assert tier.put(a, None, 0, "t", math.inf) == 3
    b = chain(3, start_token=1000)
    assert tier.put(b, None, 0, "t", math.inf) == 3
    assert tier.stats.bytes_used <= 4 * NB and tier.stats.evictions == 2
    hashes_a = [x.block_hash for x in a]
    # a's suffix went first: what is left of a is still a prefix of it
    assert tier.reach(hashes_a) == 1 and a[0].block_hash in tier and a[2].block_hash not in tier
    assert [x.block_hash for x in tier.get(hashes_a)] == hashes_a[:1]


def test_furthest_next_use_goes_first_then_lru() -> None:
    tier = HostTier(capacity_bytes=3 * NB, clock=Clock())
    soon, late, unhinted = chain(1, start_token=0), chain(1, start_token=100), chain(1, start_token=200)
    tier.put(soon, None, 0, "t", next_use=10.0)
    tier.put(late, None, 0, "t", next_use=1e6)
    tier.put(unhinted, None, 0, "t", next_use=math.inf)
    tier.put(chain(1, start_token=300), None, 0, "t", next_use=5.0)
    assert unhinted[0].block_hash not in tier  # inf = never again: evicted first
    tier.put(chain(1, start_token=400), None, 0, "t", next_use=5.0)
    assert late[0].block_hash not in tier and soon[0].block_hash in tier


def test_hard_pins_are_unevictable_and_bounded_per_tenant() -> None:
    tier = HostTier(capacity_bytes=3 * NB, hard_pin_quota_bytes=2 * NB, clock=Clock())
    a = chain(2, start_token=0)
    tier.put(a, None, 0, "alice", math.inf)
    pin_id, n = tier.pin([x.block_hash for x in a], "alice", ttl_s=1e6, hard=True)
    assert n == 2 and tier.pinned_bytes("alice") == 2 * NB
    with pytest.raises(PinQuotaExceeded):
        tier.pin([a[0].block_hash], "alice", ttl_s=1e6, hard=True)
    # everything else churns around the pinned chain
    for k in range(3):
        tier.put(chain(1, start_token=1000 + 10 * k), None, 0, "bob", math.inf)
    assert all(x.block_hash in tier for x in a)
    assert tier.unpin(pin_id) and tier.pinned_bytes("alice") == 0
    for k in range(3):
        tier.put(chain(1, start_token=2000 + 10 * k), None, 0, "bob", math.inf)
    assert a[0].block_hash not in tier


def test_pins_expire_with_their_ttl() -> None:
    clock = Clock()
    tier = HostTier(capacity_bytes=2 * NB, clock=clock)
    a = chain(1)
    tier.put(a, None, 0, "t", math.inf)
    tier.pin([a[0].block_hash], "t", ttl_s=5.0, hard=True)
    clock.t += 10
    assert tier.pinned_bytes("t") == 0


def test_soft_pins_go_last() -> None:
    tier = HostTier(capacity_bytes=2 * NB, clock=Clock())
    kept = chain(1, start_token=0)
    tier.put(kept, None, 0, "t", math.inf)
    tier.pin([kept[0].block_hash], "t", ttl_s=1e6, hard=False)
    for k in range(4):
        tier.put(chain(1, start_token=100 * (k + 1)), None, 0, "t", next_use=1.0)
    assert kept[0].block_hash in tier


def test_a_tenant_over_its_share_evicts_only_its_own_blocks() -> None:
    tier = HostTier(capacity_bytes=10 * NB, tenant_quota_bytes=2 * NB, clock=Clock())
    alice = chain(2, salt="a", start_token=0)
    tier.put(alice, None, 0, "alice", math.inf)
    for k in range(4):
        tier.put(chain(1, salt="b", start_token=100 * (k + 1)), None, 0, "bob", math.inf)
    assert all(x.block_hash in tier for x in alice)
    assert len(tier) == 4


def test_discard_drops_descendants_too() -> None:
    tier = HostTier(capacity_bytes=10 * NB)
    a = chain(3)
    tier.put(a, None, 0, "t", math.inf)
    assert tier.discard(a[1].block_hash)
    assert a[0].block_hash in tier and a[2].block_hash not in tier
