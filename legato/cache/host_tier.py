"""Host-RAM tier: a bounded pool of KV blocks evicted from (or copied off) the device.

Eviction order, among blocks that no other stored block chains from (suffix before prefix, so
what stays is always a usable prefix): soft-pinned blocks last; then furthest predicted next use
first (`set_next_use`, fed by the scheduler's reuse prediction; unhinted = never again); then
least recently used; then deepest. Hard-pinned blocks are never evicted until their pin expires
or is dropped. Hard pins are bounded per tenant (`hard_pin_quota_bytes`) and so is each tenant's
share of the pool (`tenant_quota_bytes`): a tenant over its share evicts its own blocks, never
another tenant's.

Thread-safe: the tier writer thread puts, the engine's load path reads.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from legato.cache.kv_block import KVBlock


class PinQuotaExceeded(RuntimeError):
    """A hard pin would take a tenant past its pinned-bytes quota."""


@dataclass(slots=True)
class _Entry:
    block: KVBlock
    parent: bytes | None
    depth: int
    tenant: str
    next_use: float = math.inf
    last_access: float = 0.0
    children: int = 0
    hard_pins: int = 0
    soft_pins: int = 0
    version: int = 0

    @property
    def nbytes(self) -> int:
        return len(self.block.data)


@dataclass(slots=True)
class _Pin:
    hashes: list[bytes]
    tenant: str
    hard: bool
    expires_at: float
    nbytes: int


@dataclass(slots=True)
class HostTierStats:
    puts: int = 0
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    rejected: int = 0  # blocks not stored: pool or tenant share full of pinned / unevictable blocks
    bytes_used: int = 0


@dataclass(slots=True)
class HostTier:
    capacity_bytes: int
    tenant_quota_bytes: int | None = None  # each tenant's share of the pool; None = whole pool
    hard_pin_quota_bytes: int | None = None  # each tenant's hard-pinned bytes; None = capacity
    clock: Callable[[], float] = time.monotonic
    stats: HostTierStats = field(default_factory=HostTierStats)
    _entries: dict[bytes, _Entry] = field(default_factory=dict)
    _heap: list[tuple[int, float, float, int, int, bytes]] = field(default_factory=list)
    _tenant_bytes: dict[str, int] = field(default_factory=dict)
    _pinned_bytes: dict[str, int] = field(default_factory=dict)
    _pins: dict[str, _Pin] = field(default_factory=dict)
    _pin_ids: itertools.count[int] = field(default_factory=itertools.count)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def __post_init__(self) -> None:
        if self.capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0, got {self.capacity_bytes}")

    # --- reads ----------------------------------------------------------------------------

    def __contains__(self, block_hash: bytes) -> bool:
        with self._lock:
            return block_hash in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def reach(self, hashes: Sequence[bytes], start: int = 0) -> int:
        """Index one past the contiguous run of stored blocks of `hashes` beginning at `start`."""
        with self._lock:
            end = start
            while end < len(hashes) and hashes[end] in self._entries:
                end += 1
            return end

    def get(self, hashes: Sequence[bytes]) -> list[KVBlock]:
        """The stored blocks of `hashes`, stopping at the first missing one (prefix-closed)."""
        now = self.clock()
        out: list[KVBlock] = []
        with self._lock:
            for h in hashes:
                entry = self._entries.get(h)
                if entry is None:
                    self.stats.misses += 1
                    break
                entry.last_access = now
                self._push(entry)
                out.append(entry.block)
            self.stats.hits += len(out)
        return out

    # --- writes ---------------------------------------------------------------------------

    def put(
        self, blocks: Sequence[KVBlock], parent: bytes | None, depth: int, tenant: str, next_use: float
    ) -> int:
        """Store consecutive blocks of one chain (`parent` is the first block's parent, `depth`
        its index in the sequence). Returns how many were stored; stops at the first block that
        does not fit, so what is stored stays a contiguous run."""
        now = self.clock()
        stored = 0
        with self._lock:
            self._expire_pins(now)
            prev = parent
            for i, block in enumerate(blocks):
                entry = self._entries.get(block.block_hash)
                if entry is not None:
                    entry.next_use = min(entry.next_use, next_use)
                    entry.last_access = now
                    self._push(entry)
                    prev = block.block_hash
                    continue
                if not self._make_room(len(block.data), tenant, keep=prev):
                    self.stats.rejected += len(blocks) - i
                    break
                if not isinstance(block.data, bytes):  # own the bytes: a view would pin its whole chunk
                    block = replace(block, data=bytes(block.data))
                entry = _Entry(block, prev, depth + i, tenant, next_use, now)
                self._entries[block.block_hash] = entry
                if prev is not None and prev in self._entries:
                    self._entries[prev].children += 1
                    self._entries[prev].version += 1  # no longer a leaf: its heap entry is stale
                self.stats.bytes_used += entry.nbytes
                self._tenant_bytes[tenant] = self._tenant_bytes.get(tenant, 0) + entry.nbytes
                self._push(entry)
                stored += 1
                prev = block.block_hash
            self.stats.puts += stored
        return stored

    def set_next_use(self, hashes: Sequence[bytes], deadline: float) -> int:
        """Predicted next use (monotonic deadline, inf = not again) of a stored prefix."""
        with self._lock:
            n = 0
            for h in hashes:
                entry = self._entries.get(h)
                if entry is None:
                    break
                entry.next_use = deadline
                self._push(entry)
                n += 1
            return n

    def discard(self, block_hash: bytes) -> bool:
        """Drop one block and, to stay prefix-closed, every stored block chaining from it."""
        with self._lock:
            if block_hash not in self._entries:
                return False
            doomed = {block_hash}
            changed = True
            while changed:  # descendants; the pool is small enough for a fixpoint scan
                changed = False
                for h, e in self._entries.items():
                    if h not in doomed and e.parent in doomed:
                        doomed.add(h)
                        changed = True
            for h in doomed:
                self._remove(self._entries[h])
            return True

    # --- pins -----------------------------------------------------------------------------

    def pin(self, hashes: Sequence[bytes], tenant: str, ttl_s: float, hard: bool) -> tuple[str, int]:
        """Pin the stored leading blocks of `hashes` for `ttl_s`. A hard pin makes them
        unevictable and counts against the tenant's hard-pin quota (PinQuotaExceeded past it);
        a soft pin only moves them to the back of the eviction order. Returns (pin id, blocks)."""
        if not ttl_s > 0 or math.isinf(ttl_s):
            raise ValueError(f"ttl_s must be a finite number > 0, got {ttl_s}")
        with self._lock:
            now = self.clock()
            self._expire_pins(now)
            ids = hashes[: self.reach(hashes)]
            nbytes = sum(self._entries[h].nbytes for h in ids)
            if hard:
                quota = (
                    self.hard_pin_quota_bytes
                    if self.hard_pin_quota_bytes is not None
                    else self.capacity_bytes
                )
                used = self._pinned_bytes.get(tenant, 0)
                if used + nbytes > quota:
                    raise PinQuotaExceeded(
                        f"tenant hard-pins {used} bytes; pinning {nbytes} more exceeds its quota of {quota}"
                    )
                self._pinned_bytes[tenant] = used + nbytes
            for h in ids:
                entry = self._entries[h]
                if hard:
                    entry.hard_pins += 1
                else:
                    entry.soft_pins += 1
                self._push(entry)
            pin_id = f"hostpin-{next(self._pin_ids)}"
            self._pins[pin_id] = _Pin(list(ids), tenant, hard, now + ttl_s, nbytes)
            return pin_id, len(ids)

    def unpin(self, pin_id: str) -> bool:
        with self._lock:
            pin = self._pins.pop(pin_id, None)
            if pin is None:
                return False
            if pin.hard:
                self._pinned_bytes[pin.tenant] -= pin.nbytes
            for h in pin.hashes:
                entry = self._entries.get(h)
                if entry is None:
                    continue
                if pin.hard:
                    entry.hard_pins -= 1
                else:
                    entry.soft_pins -= 1
                self._push(entry)
            return True

    def pinned_bytes(self, tenant: str) -> int:
        with self._lock:
            self._expire_pins(self.clock())
            return self._pinned_bytes.get(tenant, 0)

    def _expire_pins(self, now: float) -> None:
        for pid in [pid for pid, p in self._pins.items() if p.expires_at <= now]:
            self.unpin(pid)

    # --- eviction -------------------------------------------------------------------------

    @staticmethod
    def _key(e: _Entry) -> tuple[int, float, float, int, int, bytes]:
        return (1 if e.soft_pins else 0, -e.next_use, e.last_access, -e.depth, e.version, e.block.block_hash)

    def _push(self, entry: _Entry) -> None:
        entry.version += 1
        if entry.children == 0 and entry.hard_pins == 0:
            heapq.heappush(self._heap, self._key(entry))
        if len(self._heap) > 4 * len(self._entries) + 64:
            live = [e for e in self._entries.values() if e.children == 0 and e.hard_pins == 0]
            self._heap = [self._key(e) for e in live]
            heapq.heapify(self._heap)

    def _evictable(self, key: tuple[int, float, float, int, int, bytes]) -> _Entry | None:
        entry = self._entries.get(key[5])
        if entry is None or entry.version != key[4] or entry.children or entry.hard_pins:
            return None
        return entry

    def _make_room(self, nbytes: int, tenant: str, keep: bytes | None) -> bool:
        """Evict until `nbytes` more fit in the pool and in the tenant's share. Never evicts
        `keep` (the parent of the block being stored: the chain must stay contiguous)."""
        if nbytes > self.capacity_bytes:
            return False
        quota = self.tenant_quota_bytes
        if quota is not None:
            while self._tenant_bytes.get(tenant, 0) + nbytes > quota:
                victim = self._tenant_victim(tenant, keep)
                if victim is None:
                    return False
                self._evict(victim)
        skipped: list[tuple[int, float, float, int, int, bytes]] = []
        try:
            while self.stats.bytes_used + nbytes > self.capacity_bytes:
                if not self._heap:
                    return False
                key = heapq.heappop(self._heap)
                entry = self._evictable(key)
                if entry is None:
                    continue
                if entry.block.block_hash == keep:
                    skipped.append(key)
                    continue
                self._evict(entry)
            return True
        finally:
            for key in skipped:
                heapq.heappush(self._heap, key)

    def _tenant_victim(self, tenant: str, keep: bytes | None) -> _Entry | None:
        candidates = [
            e
            for e in self._entries.values()
            if e.tenant == tenant and not e.children and not e.hard_pins and e.block.block_hash != keep
        ]
        return min(candidates, key=self._key, default=None)

    def _evict(self, entry: _Entry) -> None:
        self._remove(entry)
        self.stats.evictions += 1

    def _remove(self, entry: _Entry) -> None:
        h = entry.block.block_hash
        del self._entries[h]
        entry.version += 1
        self.stats.bytes_used -= entry.nbytes
        self._tenant_bytes[entry.tenant] -= entry.nbytes
        if entry.parent is not None:
            parent = self._entries.get(entry.parent)
            if parent is not None:
                parent.children -= 1
                self._push(parent)
