"""One atomic value per KV chunk: a msgpack header, then the raw tensor bytes of its blocks.

Layout of a value: `MAGIC` (4 bytes), the header length (u32 little endian), the msgpack header,
then the payload: the blocks' raw bytes back to back. The header names what the bytes are
(model fingerprint, KV layout, dtype, block shape), which blocks they are (hashes, token ids) and
an xxh3-64 checksum of the payload (xxHash: ~30 GB/s, so checking costs a few percent of a
Redis round trip, where crc32's ~2.5 GB/s cost a third of it). A reader checks all of it before
a single byte reaches the engine: a value written by other weights or another layout is a
*mismatch*, a truncated or bit-flipped one is *corrupt*; both are errors the tier drops and
counts, never KV it installs.

Header and payload travel in one value on purpose: Redis may evict any key at any time, and two
keys per chunk could be half-evicted. No pickle: msgpack for the header, raw bytes for tensors.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import msgpack
import xxhash

from legato.cache.kv_block import KVBlock

MAGIC = b"LKV2"  # LKV1 values (crc32) read as corrupt: dropped and recomputed
_LEN = struct.Struct("<I")
_PREFIX = len(MAGIC) + _LEN.size
MAX_HEADER_BYTES = 1 << 20


class ChunkError(ValueError):
    """A stored chunk cannot be used."""


class ChunkCorrupt(ChunkError):
    """The value is damaged: bad magic, unreadable header, wrong length or checksum."""


class ChunkMismatch(ChunkError):
    """The value is intact but for other weights, layout, dtype, shape or another block."""


@dataclass(frozen=True, slots=True)
class KVFormat:
    """What every block of a tier must be: the engine's weights fingerprint and KV layout."""

    model: str
    layout: str
    dtype: str
    block_shape: tuple[int, ...]
    block_nbytes: int


def encode_chunk(fmt: KVFormat, blocks: Sequence[KVBlock]) -> bytes:
    """One value holding `blocks` (consecutive blocks of one chain, prefix order)."""
    return b"".join(encode_chunk_parts(fmt, blocks))


def encode_chunk_parts(fmt: KVFormat, blocks: Sequence[KVBlock]) -> list[bytes | memoryview]:
    """The pieces of `encode_chunk`'s value, not yet joined (a writer that frames them itself
    copies the megabyte of tensor bytes once instead of twice)."""
    if not blocks:
        raise ValueError("a chunk needs at least one block")
    digest = xxhash.xxh3_64()
    for b in blocks:
        if b.layout != fmt.layout or b.dtype != fmt.dtype or tuple(b.shape) != fmt.block_shape:
            raise ChunkMismatch(
                f"block {b.block_hash.hex()[:12]} is {b.layout}/{b.dtype}/{b.shape}, "
                f"tier format is {fmt.layout}/{fmt.dtype}/{fmt.block_shape}"
            )
        if len(b.data) != fmt.block_nbytes:
            raise ChunkMismatch(
                f"block {b.block_hash.hex()[:12]} has {len(b.data)} bytes, want {fmt.block_nbytes}"
            )
        digest.update(b.data)
    header = msgpack.packb(
        {
            "model": fmt.model,
            "layout": fmt.layout,
            "dtype": fmt.dtype,
            "shape": list(fmt.block_shape),
            "hashes": [b.block_hash for b in blocks],
            "tokens": [list(b.token_ids) for b in blocks],
            "nbytes": fmt.block_nbytes * len(blocks),
            "xxh3": digest.intdigest(),
        },
        use_bin_type=True,
    )
    return [MAGIC, _LEN.pack(len(header)), header, *(b.data for b in blocks)]


def decode_chunk(fmt: KVFormat, value: bytes, last_hash: bytes) -> list[KVBlock]:
    """The blocks of a value read under the key of `last_hash` (the chunk's last block), after
    checking format, identity, length and checksum. Raises ChunkCorrupt / ChunkMismatch."""
    view = memoryview(value)
    if len(view) < _PREFIX or bytes(view[:4]) != MAGIC:
        raise ChunkCorrupt("bad magic")
    (hlen,) = _LEN.unpack_from(view, 4)
    if hlen > MAX_HEADER_BYTES or _PREFIX + hlen > len(view):
        raise ChunkCorrupt(f"header length {hlen} does not fit a {len(view)}-byte value")
    try:
        header = msgpack.unpackb(view[_PREFIX : _PREFIX + hlen], raw=False)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise ChunkCorrupt(f"unreadable header: {exc}") from exc
    if not isinstance(header, dict):
        raise ChunkCorrupt("header is not a map")
    try:
        model, layout, dtype = header["model"], header["layout"], header["dtype"]
        shape, hashes, tokens = tuple(header["shape"]), header["hashes"], header["tokens"]
        nbytes, checksum = int(header["nbytes"]), int(header["xxh3"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ChunkCorrupt(f"header field missing or malformed: {exc}") from exc
    if (model, layout, dtype, shape) != (fmt.model, fmt.layout, fmt.dtype, fmt.block_shape):
        raise ChunkMismatch(
            f"chunk is for model={model} {layout}/{dtype}/{shape}; "
            f"expected model={fmt.model} {fmt.layout}/{fmt.dtype}/{fmt.block_shape}"
        )
    if not isinstance(hashes, list) or not hashes or len(tokens) != len(hashes):
        raise ChunkCorrupt("header lists no blocks, or hashes and tokens disagree")
    if hashes[-1] != last_hash:
        raise ChunkMismatch("chunk's last block hash does not match its key")
    payload = view[_PREFIX + hlen :]
    if nbytes != len(payload) or nbytes != fmt.block_nbytes * len(hashes):
        raise ChunkCorrupt(f"payload has {len(payload)} bytes, header says {nbytes}")
    if xxhash.xxh3_64_intdigest(payload) != checksum:
        raise ChunkCorrupt("payload checksum mismatch")
    size = fmt.block_nbytes
    return [
        KVBlock(
            block_hash=bytes(h),
            token_ids=tuple(int(t) for t in toks),
            layout=layout,
            dtype=dtype,
            shape=shape,
            data=payload[i * size : (i + 1) * size],  # a view: no copy
        )
        for i, (h, toks) in enumerate(zip(hashes, tokens, strict=True))
    ]
