"""Block pool: ref counts, prefix lookup, suffix-first LRU eviction, next-use hints, pins."""

from __future__ import annotations

import math

from legato.cache.block_hash import prefix_block_hashes
from legato.engine_adapter.torch.block_manager import BlockManager


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _cache_chain(bm: BlockManager, tokens: list[int], clock: FakeClock) -> list[int]:
    """Allocate, register and release a chain of full blocks, as a finished request does."""
    hashes = prefix_block_hashes(tokens, bm.block_size)
    ids = bm.allocate(len(hashes))
    assert ids is not None
    for i, (b, h) in enumerate(zip(ids, hashes, strict=True)):
        bm.register(b, h, hashes[i - 1] if i else None, i, tokens[i * 4 : (i + 1) * 4])
    clock.now += 1
    bm.release(list(reversed(ids)))
    return ids


def test_allocate_release_and_capacity() -> None:
    bm = BlockManager(4, 4)
    ids = bm.allocate(3)
    assert ids is not None and bm.num_free == 1 and bm.num_used == 3
    assert bm.allocate(2) is None  # all or nothing
    bm.release(ids)
    assert bm.num_free == 4


def test_prefix_lookup_and_hit_keeps_blocks() -> None:
    clock = FakeClock()
    bm = BlockManager(8, 4, clock)
    ids = _cache_chain(bm, list(range(12)), clock)
    assert bm.num_free == 8 and bm.num_cached == 3
    hashes = prefix_block_hashes([*range(8), 50, 51, 52, 53], 4)
    assert bm.lookup(hashes) == ids[:2]
    bm.acquire(ids[:2])
    assert bm.num_free == 6
    assert bm.count_unreferenced(ids) == 1


def test_eviction_is_lru_and_suffix_first() -> None:
    clock = FakeClock()
    bm = BlockManager(6, 4, clock)
    old = _cache_chain(bm, list(range(12)), clock)  # 3 blocks, older
    new = _cache_chain(bm, list(range(100, 112)), clock)  # 3 blocks, newer
    got = bm.allocate(2)
    assert got is not None
    # the older chain goes first, its deepest block before its parent
    assert got == [old[2], old[1]]
    assert bm.lookup(prefix_block_hashes(list(range(12)), 4)) == [old[0]]
    assert len(bm.lookup(prefix_block_hashes(list(range(100, 112)), 4))) == 3
    assert set(new).isdisjoint(got)


def test_parent_with_cached_child_is_not_evicted_first() -> None:
    clock = FakeClock()
    bm = BlockManager(3, 4, clock)
    ids = _cache_chain(bm, list(range(12)), clock)
    # touch only the root block (a newer request used just its first block)
    clock.now += 5
    bm.acquire(ids[:1])
    bm.release(ids[:1])
    # now the root is the most recent, yet suffix blocks go first and prefix closure holds
    got = bm.allocate(3)
    assert got == [ids[2], ids[1], ids[0]]


def test_next_use_hints_keep_soon_needed_prefixes() -> None:
    clock = FakeClock()
    bm = BlockManager(4, 4, clock)
    soon = _cache_chain(bm, list(range(8)), clock)  # older: LRU alone would evict it first
    later = _cache_chain(bm, list(range(100, 108)), clock)
    bm.set_next_use(prefix_block_hashes(list(range(8)), 4), clock.now + 1.0)
    bm.set_next_use(prefix_block_hashes(list(range(100, 108)), 4), clock.now + 50.0)
    got = bm.allocate(2)
    assert got == [later[1], later[0]]
    assert bm.lookup(prefix_block_hashes(list(range(8)), 4)) == soon


def test_unhinted_blocks_go_before_hinted_ones_and_expired_hints_lapse() -> None:
    clock = FakeClock()
    bm = BlockManager(4, 4, clock)
    hinted = _cache_chain(bm, list(range(8)), clock)
    unhinted = _cache_chain(bm, list(range(100, 108)), clock)
    bm.set_next_use(prefix_block_hashes(list(range(8)), 4), clock.now + 10.0)
    assert bm.allocate(2) == [unhinted[1], unhinted[0]]
    clock.now += 20  # the hinted use has passed: plain LRU again
    assert bm.allocate(2) == [hinted[1], hinted[0]]


def test_inf_hint_means_evict_first() -> None:
    clock = FakeClock()
    bm = BlockManager(4, 4, clock)
    first = _cache_chain(bm, list(range(8)), clock)
    second = _cache_chain(bm, list(range(100, 108)), clock)
    bm.set_next_use(prefix_block_hashes(list(range(8)), 4), clock.now + 5.0)
    bm.set_next_use(prefix_block_hashes(list(range(100, 108)), 4), math.inf)
    assert bm.allocate(1) == [second[1]]
    assert bm.lookup(prefix_block_hashes(list(range(8)), 4)) == first


def test_pins_block_eviction_until_unpin_or_ttl() -> None:
    clock = FakeClock()
    bm = BlockManager(4, 4, clock)
    pinned = _cache_chain(bm, list(range(8)), clock)
    _, n = bm.pin(prefix_block_hashes(list(range(8)), 4), ttl_s=10.0)
    assert n == 2 and bm.num_free == 2
    assert bm.allocate(3) is None
    got = bm.allocate(2)
    assert got is not None and set(got).isdisjoint(pinned)
    bm.release(got)
    clock.now += 11
    assert bm.expire_pins() == 1
    assert bm.num_free == 4 and bm.num_pins == 0
    pin2, _ = bm.pin(prefix_block_hashes(list(range(8)), 4), ttl_s=100.0)
    assert bm.unpin(pin2) and not bm.unpin(pin2)


def test_duplicate_hash_stays_private() -> None:
    bm = BlockManager(4, 4)
    h = prefix_block_hashes([1, 2, 3, 4], 4)[0]
    a, b = bm.allocate(2) or []
    assert bm.register(a, h, None, 0, [1, 2, 3, 4])
    assert not bm.register(b, h, None, 0, [1, 2, 3, 4])
    bm.release([a, b])
    assert bm.num_cached == 1 and bm.num_free == 4


def test_parent_whose_cached_child_another_sequence_holds_is_still_evictable() -> None:
    """Two sequences computed the same first block at once: A's copy is cached, B's stays
    private, and B's second block registers as A's block's child. Once A is done, A's block is
    unreferenced but has a held cached child; when nothing else is left it must still be evicted
    (it used to raise 'no evictable block although num_free > 0')."""
    bm = BlockManager(num_blocks=3, block_size=4)
    a = bm.allocate(1)
    b = bm.allocate(2)
    assert a is not None and b is not None
    assert bm.register(a[0], b"h1", None, 0, (1, 2, 3, 4))
    assert not bm.register(b[0], b"h1", None, 0, (1, 2, 3, 4))  # duplicate: B's copy stays private
    assert bm.register(b[1], b"h2", b"h1", 1, (5, 6, 7, 8))  # chains from A's block
    bm.release(a)
    assert bm.num_free == 1
    assert bm.allocate(1) == a
    assert bm.lookup([b"h1", b"h2"]) == []  # the orphaned child is no longer reachable
    bm.release(b)  # the orphan is evicted like any other block later
    bm.release(a)
    assert bm.allocate(3) is not None
