"""KV tiers below the simulated device pool: host RAM, then Redis (`legato bench --tiers host,redis`).

Layout. Tiers are exclusive and stratified per radix node: a node's blocks `[0, cached)` are on
the device, the next `h` blocks in the host tier, the next `rd` in the Redis tier. Every level is
prefix-closed on its own ("on the device or in a faster tier" covers a contiguous prefix from
token 0), because each level only gives up suffix blocks: the device evicts a leaf's tail blocks
into the host tier, the host tier moves a leaf's tail blocks down to Redis, Redis drops a leaf's
tail blocks. A tier leaf is a node none of whose descendants holds blocks at that level or above.
Blocks that come back to the device (a load, a prefetch, or a recompute over them) leave the
tier: a tier never holds a copy of a device block.

Order. Tier eviction uses the device pool's own key (evict-first runs, then next-use hints or
LRU), so `--policies` that ask for next-use eviction get it in every tier. Nodes referenced by a
running request are skipped while anything else is left: their blocks are about to be loaded.

Time. Each tier has one full-duplex link (PCIe for host, the network for Redis), modelled as
two busy-until clocks, one per direction. Offloads (device -> host, host -> Redis) overlap
compute and occupy the write direction for bytes / bandwidth; a block is usable in its tier at
once (offloads are never delayed or refused; `tier_<name>_write_busy_s` over the makespan shows
how close the link came to saturation). Loads queue on the read direction, and the queueing
delay is added to the tier's round trip when `plan_load` prices it; the load itself stalls the
engine step that admits the call (synchronous retrieval, as LMCache does without layer-wise
pipelining), which is pessimistic for tiers, never for recompute. Prefetches use the read
direction without stalling the engine; a call admitted before its prefetch landed waits for it.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from legato.cache.load_cost import LoadPlan, TierCost, plan_load
from legato.sim.hardware import TierSpec
from legato.sim.kv_node import Node

HOST, REDIS = 0, 1  # a level's slot: host blocks live in Node.h, Redis blocks in Node.rd


@dataclass(slots=True)
class TierStats:
    """Traffic of one tier on one replica, for the bench report."""

    offloaded_blocks: int = 0  # blocks written into the tier (from the device or the tier above)
    loaded_blocks: int = 0  # blocks read back to the device (loads and prefetches)
    hit_tokens: int = 0  # prompt tokens of admitted calls served by a load from this tier
    prefetched_blocks: int = 0
    dropped_blocks: int = 0  # blocks evicted out of the tier (down a tier, or gone from the last)
    peak_blocks: int = 0
    write_busy_s: float = 0.0  # link time spent offloading into the tier
    read_busy_s: float = 0.0  # link time spent loading back (round trips included)


class Level:
    """One tier: capacity, occupancy, its link clock, its eviction heap."""

    def __init__(self, spec: TierSpec, slot: int, block_bytes: float) -> None:
        self.spec = spec
        self.slot = slot
        self.capacity = int(spec.capacity_bytes // block_bytes)
        self.used = 0
        self.write_free_s = 0.0  # the link toward the tier (offloads) is busy until then
        self.read_free_s = 0.0  # the link back to the device (loads, prefetches) is busy until then
        self.stats = TierStats()
        self.heap: list[tuple[tuple[float, float, int], int, Node]] = []

    def cost(self, now: float) -> TierCost:
        """The tier as `plan_load` sees it at `now`: the link's queue counts as round trip."""
        wait = max(0.0, self.read_free_s - now)
        return TierCost(self.spec.name, self.spec.bandwidth, self.spec.round_trip_s + wait)


def _content(n: Node, slot: int) -> int:
    """Blocks of node `n` at level `slot` or above (device included)."""
    c = n.cached + n.h
    return c + n.rd if slot == REDIS else c


def _below(n: Node, slot: int) -> bool:
    """Does any descendant hold blocks at level `slot` or above? (then `n` is not a tier leaf)
    Only block-less children are looked through; iterative, so a long chain of them cannot hit
    Python's recursion limit."""
    stack = list(n.children.values())
    while stack:
        c = stack.pop()
        if _content(c, slot):
            return True
        if c.nblocks == 0:
            stack.extend(c.children.values())
    return False


class SimTiers:
    """The tiers of one replica. `KVPool` calls `offload` and `absorb`; the engine plans loads."""

    def __init__(
        self,
        specs: Sequence[TierSpec],
        block_size: int,
        bytes_per_token: float,
        key: Callable[[Node], tuple[float, float, int]],
    ) -> None:
        self.block_size = block_size
        self.bytes_per_token = bytes_per_token
        self.block_bytes = bytes_per_token * block_size
        self.levels: list[Level] = []
        for spec in specs:
            self.levels.append(Level(spec, HOST if spec.name == "host" else REDIS, self.block_bytes))
        self.by_slot: dict[int, Level] = {lv.slot: lv for lv in self.levels}
        self._key = key
        self._seq = 0
        self.now = 0.0

    # --- device -> tiers -----------------------------------------------------------------

    def offload(self, n: Node, blocks: int) -> None:
        """The device just evicted `blocks` tail blocks of node `n`: they enter the first tier."""
        top = self.levels[0]
        if top.slot == HOST:
            n.h += blocks
        else:
            n.rd += blocks
        self._enter(top, n, blocks)

    def _enter(self, lv: Level, n: Node, blocks: int) -> None:
        lv.used += blocks
        lv.stats.offloaded_blocks += blocks
        busy = blocks * self.block_bytes / lv.spec.bandwidth
        lv.write_free_s = max(lv.write_free_s, self.now) + busy
        lv.stats.write_busy_s += busy
        self._push(lv, n)
        if lv.used > lv.capacity:
            self._evict(lv, lv.used - lv.capacity)
        lv.stats.peak_blocks = max(lv.stats.peak_blocks, lv.used)

    def _push(self, lv: Level, n: Node) -> None:
        self._seq += 1
        heapq.heappush(lv.heap, (self._key(n), self._seq, n))

    def _evict(self, lv: Level, blocks: int) -> None:
        """Move `blocks` suffix blocks of tier leaves down a tier (or drop them from the last)."""
        below = self.levels[self.levels.index(lv) + 1] if lv is not self.levels[-1] else None
        skipped: list[Node] = []
        heap = lv.heap
        while blocks > 0 and heap:
            key, _, n = heapq.heappop(heap)
            have = n.h if lv.slot == HOST else n.rd
            if not have or _below(n, lv.slot):
                continue  # stale, or not a leaf: pushed again when its last child empties
            fresh = self._key(n)
            if fresh != key:
                self._seq += 1
                heapq.heappush(heap, (fresh, self._seq, n))
                continue
            if n.refs:
                skipped.append(n)
                continue
            blocks -= self._take(lv, below, n, min(blocks, have))
        for n in skipped:  # referenced nodes go only when nothing else is left
            if blocks <= 0:
                self._push(lv, n)
                continue
            have = n.h if lv.slot == HOST else n.rd
            if have and not _below(n, lv.slot):
                blocks -= self._take(lv, below, n, min(blocks, have))
            if n.h if lv.slot == HOST else n.rd:
                self._push(lv, n)

    def _take(self, lv: Level, below: Level | None, n: Node, take: int) -> int:
        lv.used -= take
        lv.stats.dropped_blocks += take
        if lv.slot == HOST:
            n.h -= take
            left = n.h
        else:
            n.rd -= take
            left = n.rd
        if left:
            self._push(lv, n)
        elif n.parent is not None and not _content(n, lv.slot):
            p = n.parent
            while p.nblocks == 0 and p.parent is not None:
                p = p.parent
            self._push(lv, p)  # may have become a tier leaf
        if below is not None:
            n.rd += take
            self._enter(below, n, take)
        return take

    def absorb(self, n: Node, old: int, new: int) -> None:
        """Device blocks of `n` grew from `old` to `new` (computed or loaded): tier blocks in
        that range leave their tier (the stratified layout shifts with the device boundary)."""
        h, rd = n.h, n.rd
        h2 = max(0, old + h - new)
        rd2 = max(0, old + h + rd - max(new, old + h))
        n.h, n.rd = h2, rd2
        if h != h2:
            self.by_slot[HOST].used -= h - h2
        if rd != rd2:
            self.by_slot[REDIS].used -= rd - rd2

    # --- tiers -> device -----------------------------------------------------------------

    def reach(
        self, nodes: Sequence[Node], cap_blocks: int, device_tokens: int
    ) -> tuple[list[tuple[TierCost, int]], list[int]]:
        """For each tier, fastest first, priced at `now`: the end of the path's longest prefix on
        the device or in that tier or a faster one (at most `cap_blocks` blocks), and where the
        tier's own blocks begin (the previous level's end: tiers are exclusive, so a tier holds
        only the span past the faster levels)."""
        ends: list[tuple[TierCost, int]] = []
        starts: list[int] = []
        prev = device_tokens
        for lv in self.levels:
            blocks = 0
            for n in nodes:
                c = _content(n, lv.slot)
                blocks += c
                if c < n.nblocks:
                    break
            end = max(prev, min(blocks, cap_blocks) * self.block_size)
            ends.append((lv.cost(self.now), end))
            starts.append(prev)
            prev = end
        return ends, starts

    def plan(
        self,
        nodes: Sequence[Node],
        device_tokens: int,
        cap_blocks: int,
        prefill_s: Callable[[int, int], float],
    ) -> LoadPlan:
        ends, starts = self.reach(nodes, cap_blocks, device_tokens)
        return plan_load(device_tokens, ends, self.bytes_per_token, prefill_s, starts)

    def charge(self, plan: LoadPlan, prefetch: bool = False) -> float:
        """Occupy the links for the plan's loads; returns when the last load lands."""
        done = self.now
        for name, start, end in plan.loads:
            lv = next(lv for lv in self.levels if lv.spec.name == name)
            blocks = (end - start) // self.block_size
            lv.stats.loaded_blocks += blocks
            if prefetch:
                lv.stats.prefetched_blocks += blocks
            else:
                lv.stats.hit_tokens += end - start
            start_s = max(lv.read_free_s, self.now)
            busy = lv.spec.load_time_s(blocks * self.block_bytes)
            lv.read_free_s = start_s + busy
            lv.stats.read_busy_s += busy
            done = max(done, lv.read_free_s)
        return done

    def check(self, root: Node) -> None:
        """Tier occupancy matches the nodes, stays in bounds, and every level is prefix-closed."""
        used = {HOST: 0, REDIS: 0}
        stack = [root]
        while stack:
            n = stack.pop()
            assert n.h >= 0 and n.rd >= 0, "negative tier count"
            assert n.cached + n.h + n.rd <= n.nblocks, "tier blocks past the node's end"
            used[HOST] += n.h
            used[REDIS] += n.rd
            for c in n.children.values():
                for slot in (HOST, REDIS):
                    if _content(c, slot):
                        assert _content(n, slot) == n.nblocks, "tier not prefix-closed"
                stack.append(c)
        for slot, lv in self.by_slot.items():
            assert lv.used == used[slot], f"tier {lv.spec.name} used {lv.used} != {used[slot]}"
        for slot in (HOST, REDIS):
            if slot not in self.by_slot:
                assert used[slot] == 0, "blocks in a tier that is not configured"
