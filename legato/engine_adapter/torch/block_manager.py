"""KV-cache block pool with an automatic prefix cache.

Every block is in exactly one state:
- *free*: holds nothing reusable (never hashed, or evicted); handed out first;
- *in use*: `ref_count > 0` (held by running sequences, or by pins);
- *cached*: hashed and unreferenced: still findable by prefix lookup, evicted only when the free
  list is empty.

Eviction of cached blocks is prefix-closed: a block is evictable only once no cached block chains
from it (suffix blocks go before their prefixes). Among evictable blocks the order is: furthest
next use first (from `set_next_use` hints; an unhinted block counts as "not expected again", so
Legato's hints decide what stays), then least recently used, then deepest first. A min-heap with
lazy invalidation keeps allocation O(log n).

Blocks are reference-counted, so sequences can share them: a prefix-cache hit, a pin, or a fork
(the `n` samples of one request share its prompt's blocks). A block is written only by a sequence
that holds it alone; `copy_on_write` gives a sequence its own copy of a shared, partly filled
block before it appends to it (full blocks are never written again, so they stay shared).

Pins take a reference, so a pinned block is simply "in use" until `unpin` or its TTL expires.
An `on_evict` hook sees each cached block right before it is reused, so the engine can offload it.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    block_hash: bytes | None = None
    parent_hash: bytes | None = None
    depth: int = 0  # index of this block within its sequence
    token_ids: tuple[int, ...] = ()
    tenant: str = ""  # cache salt of the sequence that computed it (tier quotas and offload)
    last_access: float = 0.0
    next_use: float = math.inf  # monotonic deadline of the next expected use; inf = no hint
    num_cached_children: int = 0
    version: int = 0  # bumped whenever the eviction key changes; stale heap entries are skipped


@dataclass(slots=True)
class Pin:
    block_ids: list[int]
    expires_at: float


@dataclass(slots=True)
class BlockStats:
    evictions: int = 0
    prefix_queries: int = 0
    prefix_hit_blocks: int = 0


@dataclass(slots=True)
class BlockManager:
    """Block pool of `num_blocks` blocks of `block_size` tokens. Not thread-safe: the engine's
    worker thread is its only user."""

    num_blocks: int
    block_size: int
    clock: Callable[[], float] = time.monotonic
    # Called with a cached block just before eviction reuses it, while its KV is still intact:
    # the engine copies blocks worth keeping to the host tier from here.
    on_evict: Callable[[Block], None] | None = None
    blocks: list[Block] = field(init=False)
    cached: dict[bytes, int] = field(init=False, default_factory=dict)
    stats: BlockStats = field(init=False, default_factory=BlockStats)
    _free: deque[int] = field(init=False)
    _heap: list[tuple[float, float, int, int, int]] = field(init=False, default_factory=list)
    _num_evictable: int = field(init=False, default=0)
    _pins: dict[str, Pin] = field(init=False, default_factory=dict)
    _pin_ids: itertools.count[int] = field(init=False, default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.blocks = [Block(i) for i in range(self.num_blocks)]
        self._free = deque(range(self.num_blocks))

    # --- capacity -------------------------------------------------------------------------

    @property
    def num_free(self) -> int:
        """Blocks allocatable right now: free plus cached-and-unreferenced (evictable)."""
        return len(self._free) + self._num_evictable

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    @property
    def num_cached(self) -> int:
        return len(self.cached)

    # --- prefix cache ---------------------------------------------------------------------

    def lookup(self, hashes: Sequence[bytes]) -> list[int]:
        """Block ids of the longest cached prefix of the chain `hashes`."""
        ids: list[int] = []
        for h in hashes:
            block_id = self.cached.get(h)
            if block_id is None:
                break
            ids.append(block_id)
        return ids

    def count_unreferenced(self, block_ids: Sequence[int]) -> int:
        """How many of these blocks would leave the evictable pool if acquired."""
        return sum(1 for b in block_ids if self.blocks[b].ref_count == 0)

    def acquire(self, block_ids: Sequence[int]) -> None:
        """Take a reference on cached blocks (a prefix hit, or a pin)."""
        now = self.clock()
        for b in block_ids:
            block = self.blocks[b]
            if block.ref_count == 0:
                self._num_evictable -= 1
                block.version += 1  # drops its heap entry
            block.ref_count += 1
            block.last_access = now

    def fork(self, block_ids: Sequence[int]) -> None:
        """Another sequence shares these (held) blocks: one more reference on each."""
        for b in block_ids:
            block = self.blocks[b]
            if block.ref_count <= 0:
                raise RuntimeError(f"block {b} is not held; only held blocks can be shared")
            block.ref_count += 1

    def is_shared(self, block_id: int) -> bool:
        return self.blocks[block_id].ref_count > 1

    def copy_on_write(self, block_id: int) -> int | None:
        """A private block in place of the shared `block_id` for a sequence about to write into
        it: a fresh block (the caller copies the KV over) while this sequence's reference on the
        shared one is dropped. None when no block can be had; `block_id` if it is not shared."""
        if not self.is_shared(block_id):
            return block_id
        new = self.allocate(1)
        if new is None:
            return None
        self.release([block_id])
        return new[0]

    def allocate(self, n: int) -> list[int] | None:
        """`n` fresh blocks (ref_count 1), evicting cached ones as needed; None if impossible."""
        if n > self.num_free:
            return None
        out: list[int] = []
        for _ in range(n):
            block_id = self._free.popleft() if self._free else self._evict_one()
            block = self.blocks[block_id]
            block.ref_count = 1
            block.last_access = self.clock()
            out.append(block_id)
        return out

    def release(self, block_ids: Sequence[int]) -> None:
        """Drop a reference on each block; unreferenced blocks become cached or free."""
        now = self.clock()
        for b in block_ids:
            block = self.blocks[b]
            if block.ref_count <= 0:
                raise RuntimeError(f"block {b} released more often than acquired")
            block.ref_count -= 1
            block.last_access = now
            if block.ref_count == 0:
                if block.block_hash is None:
                    self._reset(block)
                    self._free.append(b)
                else:
                    self._num_evictable += 1
                    self._push(block)

    def register(
        self,
        block_id: int,
        block_hash: bytes,
        parent_hash: bytes | None,
        depth: int,
        token_ids: Sequence[int],
        tenant: str = "",
    ) -> bool:
        """Make a full, computed block findable by its hash. Returns False (block stays private)
        when another block already holds that hash, e.g. two identical prompts computed at once."""
        block = self.blocks[block_id]
        if block_hash in self.cached or block.block_hash is not None:
            return False
        block.block_hash = block_hash
        block.parent_hash = parent_hash
        block.depth = depth
        block.token_ids = tuple(token_ids)
        block.tenant = tenant
        self.cached[block_hash] = block_id
        if parent_hash is not None and parent_hash in self.cached:
            self.blocks[self.cached[parent_hash]].num_cached_children += 1
        return True

    # --- eviction -------------------------------------------------------------------------

    def _push(self, block: Block) -> None:
        block.version += 1
        heapq.heappush(self._heap, self._key(block))
        if len(self._heap) > 4 * self.num_blocks + 64:  # too many stale entries: rebuild
            self._heap = [self._key(b) for b in self.blocks if b.ref_count == 0 and b.block_hash is not None]
            heapq.heapify(self._heap)

    @staticmethod
    def _key(block: Block) -> tuple[float, float, int, int, int]:
        return (-block.next_use, block.last_access, -block.depth, block.block_id, block.version)

    def _evict_one(self) -> int:
        now = self.clock()
        while self._heap:
            _, _, _, block_id, version = heapq.heappop(self._heap)
            block = self.blocks[block_id]
            if version != block.version or block.ref_count or block.block_hash is None:
                continue  # stale entry
            if block.num_cached_children:
                continue  # re-pushed when its last cached child goes
            if block.next_use < now:  # the hinted use has passed: the hint no longer applies
                block.next_use = math.inf
                self._push(block)
                continue
            return self._evict(block)
        # Every unreferenced cached block still has a cached child. That happens when two
        # sequences computed the same prefix at once: the child registered by one chains from the
        # other's block, so the parent can be unreferenced while its child is held. Evict the best
        # such parent anyway; its children become unreachable roots until they are evicted too.
        blocked = [b for b in self.blocks if b.ref_count == 0 and b.block_hash is not None]
        if not blocked:
            raise RuntimeError("block pool accounting error: no evictable block although num_free > 0")
        victim = min(blocked, key=self._key)
        for child in self.blocks:
            if child.parent_hash is not None and child.parent_hash == victim.block_hash:
                child.parent_hash = None
        victim.num_cached_children = 0
        return self._evict(victim)

    def _evict(self, block: Block) -> int:
        if self.on_evict is not None:
            self.on_evict(block)
        self._drop_from_cache(block)
        self._num_evictable -= 1
        self.stats.evictions += 1
        self._reset(block)
        return block.block_id

    def _drop_from_cache(self, block: Block) -> None:
        assert block.block_hash is not None
        del self.cached[block.block_hash]
        if block.parent_hash is not None:
            parent_id = self.cached.get(block.parent_hash)
            if parent_id is not None:
                parent = self.blocks[parent_id]
                parent.num_cached_children -= 1
                if parent.num_cached_children == 0 and parent.ref_count == 0:
                    self._push(parent)

    @staticmethod
    def _reset(block: Block) -> None:
        block.block_hash = None
        block.parent_hash = None
        block.token_ids = ()
        block.tenant = ""
        block.depth = 0
        block.next_use = math.inf
        block.num_cached_children = 0
        block.version += 1

    def set_next_use(self, hashes: Sequence[bytes], deadline: float) -> int:
        """Record when the cached prefix `hashes` is next expected to be used (monotonic time;
        inf = not expected again). Returns how many blocks the hint reached."""
        ids = self.lookup(hashes)
        for b in ids:
            block = self.blocks[b]
            block.next_use = deadline
            if block.ref_count == 0:
                self._push(block)
        return len(ids)

    # --- pins -----------------------------------------------------------------------------

    def pin(self, hashes: Sequence[bytes], ttl_s: float) -> tuple[str, int]:
        """Pin the cached leading blocks of `hashes`; returns (pin id, blocks pinned)."""
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        ids = self.lookup(hashes)
        self.acquire(ids)
        pin_id = f"pin-{next(self._pin_ids)}"
        self._pins[pin_id] = Pin(ids, self.clock() + ttl_s)
        return pin_id, len(ids)

    def unpin(self, pin_id: str) -> bool:
        pin = self._pins.pop(pin_id, None)
        if pin is None:
            return False
        self.release(pin.block_ids)
        return True

    def expire_pins(self) -> int:
        """Release pins whose TTL has passed; returns how many expired."""
        if not self._pins:
            return 0
        now = self.clock()
        expired = [pid for pid, pin in self._pins.items() if pin.expires_at <= now]
        for pid in expired:
            self.unpin(pid)
        return len(expired)

    @property
    def num_pins(self) -> int:
        return len(self._pins)

    @property
    def next_pin_expiry(self) -> float | None:
        return min((p.expires_at for p in self._pins.values()), default=None)
