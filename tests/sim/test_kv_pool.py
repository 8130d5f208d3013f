"""The segment radix tree: hits, prefix-closed eviction, eviction orders, accounting."""

from __future__ import annotations

import math

import pytest

from legato.sim.kv_pool import KVPool, Node
from legato.sim.workload import Segment


def _fill(pool: KVPool, segs: list[Segment], run: int, now: float) -> list[Node]:
    """Acquire a path, compute it fully, release it: what one finished request leaves behind."""
    nodes = pool.extend([], segs)
    hit, idx = pool.acquire(nodes, run)
    tokens = sum(s.tokens for s in segs)
    total = -(-tokens // pool.block_size)
    pool.allocate(total - hit)
    new, _ = pool.commit(nodes, idx, tokens)
    pool.free(total - hit - new)  # the partial last block
    pool.release(nodes, now)
    pool.check(0)
    return nodes


def test_blocks_belong_to_the_segment_holding_their_last_token() -> None:
    pool = KVPool(100, 16)
    nodes = pool.extend([], [Segment(1, 20), Segment(2, 20), Segment(3, 5)])
    assert [n.nblocks for n in nodes] == [1, 1, 0]  # blocks [0,16) and [16,32); 40..45 partial


def test_hit_is_the_longest_cached_prefix() -> None:
    pool = KVPool(100, 16)
    _fill(pool, [Segment(1, 64), Segment(2, 40)], run=0, now=1.0)
    assert pool.match_tokens([Segment(1, 64), Segment(2, 40), Segment(9, 100)]) == 96
    assert pool.match_tokens([Segment(1, 64), Segment(7, 40)]) == 64
    assert pool.match_tokens([Segment(5, 64)]) == 0
    assert pool.used == pool.cached_total == pool.evictable == 6


def test_lru_evicts_least_recent_tail_first_and_stays_prefix_closed() -> None:
    pool = KVPool(10, 16)
    shared = Segment(1, 32)
    _fill(pool, [shared, Segment(2, 32)], run=0, now=1.0)  # 4 blocks
    _fill(pool, [shared, Segment(3, 48)], run=1, now=2.0)  # +3 blocks
    pool.allocate(5)  # 3 free, so 2 must go: the older run's tail, never the shared prefix
    pool.check(5)
    assert pool.match_tokens([shared, Segment(2, 32)]) == 32
    assert pool.match_tokens([shared, Segment(3, 48)]) == 80
    pool.allocate(3)  # now run 1's tail goes too, still before the shared prefix
    pool.check(8)
    assert pool.match_tokens([shared, Segment(3, 48)]) == 32


def test_next_use_evicts_furthest_first() -> None:
    pool = KVPool(10, 16, eviction="next-use")
    a = _fill(pool, [Segment(1, 64)], run=0, now=1.0)
    b = _fill(pool, [Segment(2, 64)], run=1, now=2.0)
    pool.set_hint(0, 50.0, a)
    pool.set_hint(1, 10.0, b)
    pool.allocate(6)  # 2 free; 4 evicted from run 0 (needed furthest away), though it is older
    assert pool.match_tokens([Segment(1, 64)]) == 0
    assert pool.match_tokens([Segment(2, 64)]) == 64
    pool.set_hint(1, math.inf, b)
    pool.free(6)
    pool.check(0)


def test_evict_first_runs_go_before_lru_order() -> None:
    pool = KVPool(8, 16)
    a = _fill(pool, [Segment(1, 64)], run=0, now=1.0)
    _fill(pool, [Segment(2, 64)], run=1, now=2.0)
    pool.set_evict_first(1, True, pool.extend([], [Segment(2, 64)]))
    pool.allocate(4)
    assert pool.match_tokens([Segment(1, 64)]) == 64
    assert pool.match_tokens([Segment(2, 64)]) == 0
    del a


def test_short_segments_do_not_break_prefix_closure() -> None:
    pool = KVPool(10, 16)
    _fill(pool, [Segment(1, 16), Segment(2, 5), Segment(3, 27)], run=0, now=1.0)
    # blocks: [0,16) on seg 1; [16,32) and [32,48) on seg 3 (seg 2 owns none)
    path = [Segment(1, 16), Segment(2, 5), Segment(3, 27)]
    assert pool.match_tokens(path) == 48
    pool.allocate(9)  # 7 free: seg 3's two blocks go, then seg 1 is a leaf (seg 2 holds none)
    pool.check(9)
    assert pool.match_tokens(path) == 16
    pool.allocate(1)
    pool.check(10)
    assert pool.match_tokens(path) == 0


def test_referenced_blocks_are_never_evicted() -> None:
    pool = KVPool(4, 16)
    nodes = pool.extend([], [Segment(1, 64)])
    pool.acquire(nodes, 0)
    pool.allocate(4)
    pool.commit(nodes, 0, 64)
    with pytest.raises(AssertionError, match="nothing left to evict"):
        pool.allocate(1)


def test_prune_drops_only_empty_unreferenced_leaves_and_walks_deep_trees_iteratively() -> None:
    pool = KVPool(10, 16)
    kept = _fill(pool, [Segment(1, 32)], run=0, now=1.0)  # 2 cached blocks
    deep = pool.extend([], [Segment(100 + i, 16) for i in range(5000)])  # deeper than the recursion limit
    queued = pool.extend([], [Segment(7, 16), Segment(8, 16)])  # a queued request's path
    held = pool.extend([], [Segment(9, 16)])
    pool.acquire(held, run=3)
    assert pool.n_nodes == 1 + 5000 + 2 + 1
    removed = pool.prune({id(n) for n in queued})
    assert sorted(removed) == [100 + i for i in range(5000)]
    assert pool.n_nodes == 4 and deep[0].parent is pool.root
    assert pool.match_tokens([Segment(1, 32)]) == 32 and kept[0] is pool.root.children[1]
    assert pool.prune(set()) == [8, 7]  # the queued path goes once nobody keeps it
    pool.check(0)


def test_compact_heap_keeps_only_valid_entries_and_the_eviction_order() -> None:
    pool = KVPool(8, 16)
    for run in range(6):  # the same prompt six times: one valid entry, five void ones
        _fill(pool, [Segment(1, 32)], run=run, now=float(run))
    _fill(pool, [Segment(2, 32)], run=9, now=10.0)
    assert pool.heap_len == 7
    pool.compact_heap()
    assert pool.heap_len == 2
    pool.allocate(6)  # 4 free: the least recently used prompt (segment 1) goes first
    assert pool.match_tokens([Segment(1, 32)]) == 0 and pool.match_tokens([Segment(2, 32)]) == 32
