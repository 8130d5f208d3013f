"""Chunk values: round trip, and every kind of damage or mismatch is detected."""

from __future__ import annotations

import dataclasses

import pytest

from legato.cache.kv_codec import MAGIC, ChunkCorrupt, ChunkMismatch, decode_chunk, encode_chunk
from tests.cache.kv import FMT, chain


def test_round_trip_keeps_hashes_tokens_and_bytes() -> None:
    blocks = chain(3)
    value = encode_chunk(FMT, blocks)
    assert b"pickle" not in value and value[:4] == MAGIC
    assert decode_chunk(FMT, value, blocks[-1].block_hash) == blocks


@pytest.mark.parametrize(
    "damage",
    [
        lambda v: v[:-1],  # truncated payload
        lambda v: v[:-5] + bytes([v[-5] ^ 0xFF]) + v[-4:],  # one flipped payload byte
        lambda v: b"XXXX" + v[4:],  # bad magic
        lambda v: v[:4] + b"\xff\xff\xff\x7f" + v[8:],  # absurd header length
        lambda v: v[:10] + b"\xc1" * 20 + v[30:],  # garbage header
        lambda v: b"",
    ],
)
def test_damaged_values_are_corrupt(damage: object) -> None:
    blocks = chain(2)
    value = encode_chunk(FMT, blocks)
    with pytest.raises(ChunkCorrupt):
        decode_chunk(FMT, damage(value), blocks[-1].block_hash)  # type: ignore[operator]


def test_other_weights_layout_or_key_are_mismatches() -> None:
    blocks = chain(2)
    value = encode_chunk(FMT, blocks)
    with pytest.raises(ChunkMismatch, match="model"):
        decode_chunk(dataclasses.replace(FMT, model="other-weights"), value, blocks[-1].block_hash)
    with pytest.raises(ChunkMismatch, match="model"):
        decode_chunk(dataclasses.replace(FMT, dtype="bfloat16"), value, blocks[-1].block_hash)
    with pytest.raises(ChunkMismatch, match="key"):
        decode_chunk(FMT, value, blocks[0].block_hash)
    with pytest.raises(ChunkMismatch):
        encode_chunk(dataclasses.replace(FMT, layout="other"), blocks)
