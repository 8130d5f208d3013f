"""`KVBlock`: one block of KV cache as plain data, the unit every KV tier stores and moves.

It lives in the cache layer, below the engines: the host and Redis tiers, the codec and the
tier manager store it, and engines (`KVTransferEngine`) export and import it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class KVBlock:
    """One block of KV cache, portable between engine processes with the same weights."""

    block_hash: bytes  # chained hash (parent hash, token ids, extra keys), see legato.cache
    token_ids: tuple[int, ...]
    layout: str  # e.g. "layers,kv,heads,block,head_dim" - must match on import
    dtype: str  # torch dtype name, e.g. "float32"
    shape: tuple[int, ...]
    # Raw tensor bytes in `layout` / `dtype` / `shape`; a read-only view into the chunk value when
    # decoded from Redis (no per-block copy: copying a 1 MiB chunk block by block page-faults).
    data: bytes | memoryview


__all__ = ["KVBlock"]
