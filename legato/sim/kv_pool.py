"""The simulated engine's KV block pool with automatic prefix caching, over prompt segments.

Prompts are sequences of identified segments (`legato.sim.workload.Segment`), so the prefix
cache is a radix tree with one node per segment along a path: two sequences share KV exactly as
far as their leading segments agree. A node owns the full blocks whose *last* token falls inside
its segment (a block straddling two segments depends on both, so it hangs off the deeper one);
`cached` counts how many of those blocks, from the front, are resident. Blocks are never Python
objects: a 100k-token prompt is a few dozen nodes with integer counts.

Semantics follow vLLM's v1 KV cache manager: only full blocks are cached; a block referenced by a
running request cannot be evicted; unreferenced cached blocks stay in the pool and are reused on
a hit until evicted to make room. Eviction is prefix-closed (tail blocks of leaf nodes first, as
vLLM's reversed free-list order and SGLang's radix tree both do), in one of two orders:

- `lru`: least recently released first (vLLM's free-block queue);
- `next-use`: furthest hinted next use first (Bélády / KVFlow); unhinted nodes go last, LRU.

Runs marked evict-first (paused programs) go before anything else in both orders. The ranking is
`legato.cache.eviction.eviction_key`, shared with the torch engine's block pool.

With KV tiers (`sim/tiers.py`), evicted blocks are offloaded to the host / Redis tier instead
of vanishing, and blocks computed or loaded back leave their tier (`SimTiers.absorb`). A pool
whose only tier is a swap space (`offload_evictions=False`, vLLM's swap-based preemption) drops
evicted blocks as usual and moves only a preempted request's blocks down (`swap_out`).

Accounting invariant (checked by `check()`): used = sum(cached) + blocks held privately by
running requests (partial blocks, duplicates, and blocks computed but not yet committed).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

from legato.cache.eviction import EvictionKey, eviction_key
from legato.sim.kv_node import Node as Node
from legato.sim.tiers import SimTiers
from legato.sim.workload import Segment

UNLIMITED_BLOCKS = 1 << 60


HeapEntry = tuple[EvictionKey, int, int, Node]


class KVPool:
    def __init__(self, capacity_blocks: int, block_size: int, eviction: str = "lru") -> None:
        if eviction not in ("lru", "next-use"):
            raise ValueError(f"unknown eviction order {eviction!r}; valid choices: lru, next-use")
        self.capacity = capacity_blocks
        self.block_size = block_size
        self.next_use_mode = eviction == "next-use"
        self.root = Node(None, 0, 0, block_size)
        self.n_nodes = 0  # nodes below the root (what `prune` keeps bounded)
        self.used = 0  # allocated blocks: cached ones plus private ones of running requests
        self.cached_total = 0
        self.evictable = 0  # cached blocks in unreferenced nodes
        self.evicted_blocks = 0
        self.hints: dict[int, float] = {}  # run -> absolute time of next use
        self.evict_first: set[int] = set()
        self._heap: list[HeapEntry] = []
        self._seq = 0
        self.tiers: SimTiers | None = None  # set by the engine when the replica has KV tiers
        self.offload_evictions = True  # evicted blocks go to the tiers (False: a swap space only)

    # --- paths ---------------------------------------------------------------------------

    def extend(self, nodes: list[Node], segments: Sequence[Segment]) -> list[Node]:
        """`nodes` (a path from the root) extended by `segments`, creating nodes as needed."""
        node = nodes[-1] if nodes else self.root
        out = list(nodes)
        bs = self.block_size
        for seg in segments:
            child = node.children.get(seg.seg_id)
            if child is None:
                child = Node(node, node.end, node.end + seg.tokens, bs)
                node.children[seg.seg_id] = child
                self.n_nodes += 1
            out.append(child)
            node = child
        return out

    def match_tokens(self, segments: Sequence[Segment]) -> int:
        """Leading tokens of `segments` resident in the cache (whole blocks), without touching it."""
        node = self.root
        blocks = 0
        for seg in segments:
            child = node.children.get(seg.seg_id)
            if child is None:
                break
            blocks += child.cached
            if child.cached < child.nblocks:
                break
            node = child
        return blocks * self.block_size

    # --- references ----------------------------------------------------------------------

    def acquire(self, nodes: Sequence[Node], run: int) -> tuple[int, int]:
        """Reference every node of a path; returns (leading cached blocks, index of the first
        node not fully cached)."""
        hit = 0
        stop = -1
        for i, n in enumerate(nodes):
            if n.refs == 0:
                self.evictable -= n.cached
            n.refs += 1
            if n.owner != run:
                if n.owner >= 0:
                    n.shared = True
                n.owner = run
            if stop < 0:
                hit += n.cached
                if n.cached < n.nblocks:
                    stop = i
        return hit, (len(nodes) if stop < 0 else stop)

    def release(self, nodes: Sequence[Node], now: float | None) -> None:
        """Drop one reference from every node of a path. `now=None` undoes an `acquire` without
        counting it as a use (a failed admission)."""
        if now is not None:
            for n in nodes:
                n.last_access = now
        for n in nodes:
            n.refs -= 1
            if n.refs == 0:
                self.evictable += n.cached
                if n.cached and not n.cached_children:
                    self._push(n)

    def commit(self, nodes: Sequence[Node], idx: int, tokens: int) -> tuple[int, int]:
        """Mark the full blocks among the first `tokens` tokens of a referenced path as cached.
        Returns (blocks newly cached, index of the first node not yet complete)."""
        bs = self.block_size
        new = 0
        full = tokens // bs
        n_nodes = len(nodes)
        while idx < n_nodes:
            n = nodes[idx]
            done = full - n.start // bs
            if done > n.nblocks:
                done = n.nblocks
            if done > n.cached:
                if n.h or n.rd:
                    assert self.tiers is not None
                    self.tiers.absorb(n, n.cached, done)
                if n.cached == 0 and not n.cached_children:
                    p = n.parent
                    if p is not None:
                        if p.cached or p.cached_children:
                            p.cached_children += 1  # the common case, inlined
                        else:
                            self._mark_live(n)
                new += done - n.cached
                n.cached = done
            if tokens < n.end:
                break
            idx += 1
        self.cached_total += new
        return new, idx

    @staticmethod
    def _mark_live(n: Node) -> None:
        """`n` gets its first cached block: count it in its parent's `cached_children` (and up
        through block-less ancestors, so a short segment never breaks prefix closure)."""
        p = n.parent
        while p is not None:
            was_live = p.cached or p.cached_children
            p.cached_children += 1
            if was_live:
                return
            p = p.parent

    # --- allocation ----------------------------------------------------------------------

    @property
    def available(self) -> int:
        return self.capacity - self.used + self.evictable

    def allocate(self, blocks: int) -> None:
        free = self.capacity - self.used
        if blocks > free:
            self._evict(blocks - free)
        self.used += blocks
        if self.used > self.capacity:
            raise AssertionError(f"KV pool over capacity: {self.used} > {self.capacity}")

    def free(self, blocks: int) -> None:
        self.used -= blocks
        if self.used < 0:
            raise AssertionError(f"KV pool freed below zero: {self.used}")

    # --- eviction ------------------------------------------------------------------------

    def set_hint(self, run: int, at_s: float, tail: Sequence[Node]) -> None:
        self.hints[run] = at_s
        self._repush_tail(tail)

    def set_evict_first(self, run: int, on: bool, tail: Sequence[Node]) -> None:
        if on:
            self.evict_first.add(run)
        else:
            self.evict_first.discard(run)
        self._repush_tail(tail)

    def forget_run(self, run: int, tail: Sequence[Node]) -> None:
        """The run ended: its private KV is not needed again (next-use mode says so)."""
        self.evict_first.discard(run)
        if self.next_use_mode:
            self.hints[run] = math.inf
            self._repush_tail(tail)
        else:
            self.hints.pop(run, None)

    def _repush_tail(self, tail: Sequence[Node]) -> None:
        for n in reversed(tail):
            if n.cached:
                if n.refs == 0 and not n.cached_children:
                    self._push(n)
                return

    def _key(self, n: Node) -> EvictionKey:
        """`legato.cache.eviction.eviction_key`; a node used by several runs is never ranked by
        one run's pause or hint."""
        if n.shared:
            return eviction_key(None, n.last_access, n.depth)
        hint = self.hints.get(n.owner) if self.next_use_mode else None
        return eviction_key(hint, n.last_access, n.depth, evict_first=n.owner in self.evict_first)

    def _push(self, n: Node) -> None:
        n.version += 1
        self._seq += 1
        heapq.heappush(self._heap, (self._key(n), self._seq, n.version, n))

    def _evict(self, blocks: int) -> None:
        """Evict `blocks` blocks in key order. After a node empties, its parent usually comes
        next (same run, same key class): it is evicted straight away, without a heap round
        trip, whenever its key is not larger than the heap's top."""
        heap = self._heap
        n: Node | None = None
        from_heap = False
        while blocks > 0:
            if n is None:
                if not heap:
                    raise AssertionError("KV pool: nothing left to evict")
                _, _, version, n = heap[0]
                if version != n.version or n.refs or not n.cached or n.cached_children:
                    heapq.heappop(heap)
                    n = None
                    continue
                from_heap = True
            take = min(blocks, n.cached)
            n.cached -= take
            blocks -= take
            self.cached_total -= take
            self.evictable -= take
            self.used -= take
            self.evicted_blocks += take
            if self.tiers is not None and self.offload_evictions:
                self.tiers.offload(n, take)
            if n.cached:  # done; a heap entry stays valid (the key does not depend on `cached`)
                if not from_heap:
                    self._push(n)
                return
            if from_heap:
                heapq.heappop(heap)
            p = n.parent
            assert p is not None
            p.cached_children -= 1
            while not p.cached and not p.cached_children and p.parent is not None:
                p = p.parent
                p.cached_children -= 1
            n = None
            if p.refs == 0 and p.cached and not p.cached_children:
                key = self._key(p)
                p.version += 1  # any older entry of p is void
                if not heap or key <= heap[0][0]:
                    n, from_heap = p, False
                else:
                    self._seq += 1
                    heapq.heappush(heap, (key, self._seq, p.version, p))
        if n is not None and not from_heap:
            self._push(n)  # the next chain node was not needed after all: give it its entry

    def swap_out(self, nodes: Sequence[Node]) -> int:
        """Swap-based preemption: move the unreferenced tail of a path (a preempted request's
        blocks) to the first tier now, leaf first, keeping the cache prefix-closed. Returns the
        blocks moved."""
        if self.tiers is None:
            return 0
        moved = 0
        for n in reversed(nodes):
            if n.refs or n.cached_children:
                break
            if not n.cached:
                continue
            take = n.cached
            n.cached = 0
            self.cached_total -= take
            self.evictable -= take
            self.used -= take
            self.evicted_blocks += take
            self.tiers.offload(n, take)
            moved += take
            p = n.parent
            assert p is not None
            p.cached_children -= 1
            while not p.cached and not p.cached_children and p.parent is not None:
                p = p.parent
                p.cached_children -= 1
        for n in nodes:  # the new tail may be evictable now: give it a heap entry
            if n.refs == 0 and n.cached and not n.cached_children:
                self._push(n)
        return moved

    # --- bounding a long-lived pool ------------------------------------------------------

    def prune(self, keep: set[int]) -> list[int]:
        """Remove the nodes that hold nothing: no cached block, no tier copy, no reference, no
        child left, and not in `keep` (ids of nodes on paths a queued request will acquire).
        Such a node is exactly what `extend` would create afresh, so a long-lived pool (the
        real-time engine) stops growing with every prefix it ever saw. Returns the seg ids (child
        keys) removed. Iterative: a walk in pre-order, undone in reverse, so children go first."""
        order: list[tuple[Node, int, Node]] = []
        stack = [self.root]
        while stack:
            n = stack.pop()
            for seg_id, c in n.children.items():
                order.append((n, seg_id, c))
                stack.append(c)
        removed: list[int] = []
        for parent, seg_id, c in reversed(order):
            if c.children or c.refs or c.cached or c.h or c.rd or id(c) in keep:
                continue
            del parent.children[seg_id]
            removed.append(seg_id)
        self.n_nodes -= len(removed)
        return removed

    def compact_heap(self) -> None:
        """Drop the eviction heap's void entries (an older version of a node, or a node that is
        referenced, empty or no longer a cached leaf). `_evict` skips them lazily, but while the
        pool never fills they pile up, one per release. At most one entry per cached node is
        valid, so after this the heap holds at most `capacity` entries."""
        self._heap = [
            e
            for e in self._heap
            if e[2] == e[3].version and not e[3].refs and e[3].cached and not e[3].cached_children
        ]
        heapq.heapify(self._heap)

    @property
    def heap_len(self) -> int:
        return len(self._heap)

    # --- checks --------------------------------------------------------------------------

    def check(self, private_blocks: int) -> None:
        """Full consistency walk (tests turn this on): O(nodes)."""
        total = evictable = 0
        stack = [self.root]
        while stack:
            n = stack.pop()
            assert 0 <= n.cached <= n.nblocks, "node cached out of range"
            assert n.refs >= 0, "negative refs"
            kids = 0
            for c in n.children.values():
                if c.cached or c.cached_children:
                    kids += 1
                    assert n.cached == n.nblocks, "cache not prefix-closed"
                stack.append(c)
            assert kids == n.cached_children, "cached_children out of sync"
            total += n.cached
            if n.refs == 0:
                evictable += n.cached
        assert total == self.cached_total, f"cached_total {self.cached_total} != {total}"
        assert evictable == self.evictable, f"evictable {self.evictable} != {evictable}"
        assert 0 <= self.used <= self.capacity, f"used {self.used} outside [0, {self.capacity}]"
        assert self.used == total + private_blocks, f"used {self.used} != {total} + {private_blocks}"
        if self.tiers is not None:
            self.tiers.check(self.root)
