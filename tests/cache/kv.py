"""Real KV-shaped blocks for tier tests (random bytes in the engine's block format)."""

from __future__ import annotations

import os

from legato.cache.block_hash import cache_extra_keys, prefix_block_hashes
from legato.cache.kv_codec import KVFormat
from legato.engine_adapter.base import KVBlock

BLOCK = 4
FMT = KVFormat("fp-test", "layers,block_tokens,kv_heads,k_then_v_head_dim", "float32", (2, BLOCK, 2, 8), 512)


def chain(n_blocks: int, salt: str = "", start_token: int = 0, fmt: KVFormat = FMT) -> list[KVBlock]:
    """`n_blocks` consecutive blocks of one prompt, with real chained hashes."""
    tokens = [start_token + i for i in range(n_blocks * BLOCK)]
    keys = cache_extra_keys(fmt.model, fmt.dtype, fmt.layout, salt)
    hashes = prefix_block_hashes(tokens, BLOCK, keys)
    return [
        KVBlock(
            h,
            tuple(tokens[i * BLOCK : (i + 1) * BLOCK]),
            fmt.layout,
            fmt.dtype,
            fmt.block_shape,
            os.urandom(fmt.block_nbytes),
        )
        for i, h in enumerate(hashes)
    ]
