"""Chained block hashes: the identity of a KV-cache block.

A block's hash covers its parent's hash, its own token ids and "extra keys" (model fingerprint,
dtype, tenant cache salt, adapter), so two blocks share a hash only when the whole prefix up to
and including them is the same, computed by the same weights, for the same tenant. That makes a
hash safe to use as a cache key in any tier (device, host RAM, Redis) and across processes.

Hashes are sha256 over a msgpack encoding of `(parent, token_ids, extra_keys)`; never Python's
`hash`, which is salted per process.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

import msgpack

ExtraKeys = tuple[str | int, ...]


def block_hash(parent: bytes | None, token_ids: Sequence[int], extra_keys: ExtraKeys = ()) -> bytes:
    """Hash of one block given its parent's hash (None for the first block of a sequence)."""
    payload = msgpack.packb([parent, [int(t) for t in token_ids], list(extra_keys)], use_bin_type=True)
    return hashlib.sha256(payload).digest()


def prefix_block_hashes(token_ids: Sequence[int], block_size: int, extra_keys: ExtraKeys = ()) -> list[bytes]:
    """Chained hashes of every *full* block of `token_ids` (a trailing partial block has none)."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    hashes: list[bytes] = []
    parent: bytes | None = None
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = block_hash(parent, token_ids[start : start + block_size], extra_keys)
        hashes.append(parent)
    return hashes


CACHE_SALT_KEY = "legato-cache-salt-v1"
"""The server's salt key (`legato.server` passes it to its schedulers). Not a secret: the salt
isolates tenants' prefix caches because the *tenant id* comes from the authenticated API key,
never from anything the client sends."""


def tenant_salt(tenant: str, key: str = CACHE_SALT_KEY) -> str:
    """The one cache-salt function: HMAC-SHA256(key, tenant id), 32 hex digits, of an
    *authenticated* tenant id (the server passes the tenant it verified, never a client-supplied
    salt). A salt reveals nothing about the tenant name when it shows up in hashes or Redis keys,
    and the same tenant gets the same salt in every process. The server's tenants, its
    schedulers and the tier tests all derive salts here."""
    if not tenant:
        raise ValueError("tenant must be a non-empty authenticated tenant id")
    return hmac.new(key.encode(), tenant.encode(), hashlib.sha256).hexdigest()[:32]


def cache_extra_keys(model: str, dtype: str, layout: str, salt: str | None, adapter: str = "") -> ExtraKeys:
    """The one definition of the extra keys of a block hash: weights fingerprint, KV dtype, KV
    layout, adapter (LoRA) id and the tenant's cache salt. Every producer of block hashes (the
    torch engine's scheduler, its `block_hashes`, the tier manager, tests in other processes) goes
    through here, so a block computed anywhere has the same identity everywhere."""
    return (model, dtype, layout, adapter, salt or "")


def salt_of(extra_keys: ExtraKeys) -> str:
    """The tenant cache salt inside extra keys built by `cache_extra_keys` ("" if none)."""
    return str(extra_keys[-1]) if extra_keys else ""
