"""Chained block hashes: reproducible, chained, salted."""

from __future__ import annotations

import subprocess
import sys

import pytest

from legato.cache.block_hash import block_hash, prefix_block_hashes


def test_hash_is_sha256_digest_and_deterministic() -> None:
    h = block_hash(None, [1, 2, 3], ("m", 0))
    assert len(h) == 32
    assert h == block_hash(None, (1, 2, 3), ("m", 0))


def test_hash_is_the_same_in_another_process() -> None:
    code = (
        "from legato.cache.block_hash import block_hash; "
        "print(block_hash(b'p', [7, 8, 9], ('fp', 'salt')).hex())"
    )
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert other == block_hash(b"p", [7, 8, 9], ("fp", "salt")).hex()


def test_parent_tokens_and_extra_keys_all_matter() -> None:
    base = block_hash(None, [1, 2], ("m",))
    assert block_hash(b"x" * 32, [1, 2], ("m",)) != base
    assert block_hash(None, [1, 3], ("m",)) != base
    assert block_hash(None, [1, 2], ("m", "tenant-a")) != base
    assert block_hash(None, [1, 2], ("m", "tenant-a")) != block_hash(None, [1, 2], ("m", "tenant-b"))
    assert block_hash(None, [1, 2], ("1",)) != block_hash(None, [1, 2], (1,))


def test_prefix_hashes_chain_over_full_blocks_only() -> None:
    tokens = list(range(40))
    hashes = prefix_block_hashes(tokens, 16, ("m",))
    assert len(hashes) == 2  # the trailing 8 tokens are not a full block
    assert hashes[0] == block_hash(None, tokens[:16], ("m",))
    assert hashes[1] == block_hash(hashes[0], tokens[16:32], ("m",))
    # a shared prefix gives shared leading hashes, a different first block changes all of them
    assert prefix_block_hashes([*tokens[:16], 99, *tokens[17:]], 16, ("m",))[0] == hashes[0]
    assert prefix_block_hashes([99, *tokens[1:]], 16, ("m",))[1] != hashes[1]
    with pytest.raises(ValueError, match="block_size"):
        prefix_block_hashes(tokens, 0)
