"""The one eviction ranking of cached, unreferenced KV: the simulated pool (`sim/kv_pool.py`) and
the torch engine's block pool (`engine_adapter/torch/block_manager.py`) both order their
evictable blocks by `eviction_key` (smaller is evicted sooner). Both also evict prefix-closed
(a block only once nothing cached chains from it), which is theirs to enforce.

The order, in three classes:

1. *evict first*: KV of a paused program (the simulated replica knows which run owns a block;
   the torch engine learns it from a `next_use = inf` hint and ranks it in class 2), LRU;
2. *hinted*: blocks with a next-use hint, furthest next use first (Bélády; `math.inf`, "not
   expected again", before any finite time);
3. *unhinted*: least recently used first. An unhinted block's next use is *unknown*, not
   "never": it is kept behind every block known to be needed later, so shared prefixes and the
   KV of runs the policy has not ranked yet are not sacrificed to hinted ones. (The torch pool
   used to rank unhinted blocks as "never" and evict them first; a finished run's KV is now
   hinted "never" explicitly by the runtime, as the simulator does.)

Within a class, deeper blocks (suffixes) go before shallower ones of the same key.
"""

from __future__ import annotations

EvictionKey = tuple[float, float, int]


def eviction_key(
    next_use: float | None, last_access: float, depth: int, *, evict_first: bool = False
) -> EvictionKey:
    """Rank of an evictable block: `next_use` is its hinted next use (absolute time, `math.inf`
    for never; None: no hint), `last_access` when it was last released, `depth` its position in
    its sequence (or segment path)."""
    if evict_first:
        return (-1.0, last_access, -depth)
    if next_use is not None:
        return (0.0, -next_use, -depth)
    return (1.0, last_access, -depth)


__all__ = ["EvictionKey", "eviction_key"]
