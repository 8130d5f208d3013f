"""Redis tier against a real redis-server: round trips, eviction as a miss, corruption and
mismatch detected / dropped / counted, hash-tagged keys, tenant isolation, a dead Redis."""

from __future__ import annotations

import dataclasses
import time

import redis
from redis.cluster import key_slot

from legato.cache.circuit_breaker import BreakerState
from legato.cache.kv_codec import encode_chunk
from legato.cache.redis_tier import RedisTier, RedisTierConfig, chunk_key
from tests.cache.kv import BLOCK, FMT, chain
from tests.cache.redis_server import RedisServer


def make_tier(url: str, **kw: object) -> RedisTier:
    return RedisTier(RedisTierConfig(url=url, chunk_blocks=2, ttl_s=600, **kw), FMT)  # type: ignore[arg-type]


def test_put_probe_get_round_trip_with_ttl(redis_url: str) -> None:
    tier = make_tier(redis_url)
    blocks = chain(6)
    hashes = [b.block_hash for b in blocks]
    lasts = tier.chunk_last_hashes(hashes)
    assert lasts == [hashes[1], hashes[3], hashes[5]]
    assert tier.probe(lasts) == 0
    assert tier.put([blocks[0:2], blocks[2:4], blocks[4:6]]) == 3
    assert tier.probe(lasts) == 3
    assert tier.get(lasts) == blocks
    assert tier.stats.hit_chunks == 3 and tier.stats.bytes_written > 6 * FMT.block_nbytes
    ttl = redis.Redis.from_url(redis_url).ttl(tier.key(lasts[0]))
    assert 0 < ttl <= 600


def test_evicted_chunk_ends_the_prefix(redis_url: str) -> None:
    tier = make_tier(redis_url)
    blocks = chain(6)
    tier.put([blocks[0:2], blocks[2:4], blocks[4:6]])
    lasts = tier.chunk_last_hashes([b.block_hash for b in blocks])
    redis.Redis.from_url(redis_url).delete(tier.key(lasts[1]))  # what maxmemory eviction does
    assert tier.probe(lasts) == 1
    assert tier.get(lasts) == blocks[:2]
    assert tier.stats.miss_chunks == 2


def test_corrupt_and_mismatched_values_are_dropped_and_counted(redis_url: str) -> None:
    tier = make_tier(redis_url)
    raw = redis.Redis.from_url(redis_url)
    blocks = chain(4)
    tier.put([blocks[0:2], blocks[2:4]])
    lasts = tier.chunk_last_hashes([b.block_hash for b in blocks])
    value = raw.get(tier.key(lasts[1]))
    assert value is not None
    raw.set(tier.key(lasts[1]), value[:-3] + b"zzz")
    assert tier.get(lasts) == blocks[:2]
    assert tier.stats.corrupt == 1 and raw.exists(tier.key(lasts[1])) == 0
    other = make_tier(redis_url)
    other.fmt = dataclasses.replace(FMT, model="other-weights")
    assert other.get(lasts[:1]) == []
    assert other.stats.mismatched == 1 and raw.exists(tier.key(lasts[0])) == 0


def test_keys_are_hash_tagged_for_cluster() -> None:
    h = bytes(range(32))
    key = chunk_key(h)
    assert key == "legato:kv:{" + h.hex() + "}"
    # Redis Cluster hashes only the tag: the key's slot is the chunk hash's slot
    assert key_slot(key.encode()) == key_slot(h.hex().encode())
    assert key_slot(chunk_key(h, "other:prefix").encode()) == key_slot(key.encode())


def test_tenants_never_share_a_key(redis_url: str) -> None:
    tier = make_tier(redis_url)
    alice, bob = chain(2, salt="alice"), chain(2, salt="bob")
    assert [b.token_ids for b in alice] == [b.token_ids for b in bob]
    tier.put([alice])
    assert tier.key(alice[-1].block_hash) != tier.key(bob[-1].block_hash)
    assert tier.probe([bob[-1].block_hash]) == 0 and tier.get([bob[-1].block_hash]) == []


def test_dead_redis_is_a_fast_miss_and_the_breaker_opens() -> None:
    server = RedisServer()
    server.start()
    tier = RedisTier(
        RedisTierConfig(url=server.url, chunk_blocks=2, op_timeout_s=0.1, breaker_cooldown_s=0.3), FMT
    )
    blocks = chain(2)
    assert tier.put([blocks]) == 1
    lasts = [blocks[-1].block_hash]
    try:
        server.pause()  # stalled: every call hits the socket timeout
        start = time.monotonic()
        for _ in range(3):
            assert tier.probe(lasts) == 0
        assert time.monotonic() - start < 2.0  # bounded by the 0.1 s op timeout, not hanging
        assert tier.breaker.state == "open" and tier.stats.errors == 3
        assert tier.get(lasts) == [] and tier.stats.refused == 1  # refused without touching Redis
        server.resume()
        time.sleep(0.35)
        assert tier.probe(lasts) == 1  # half-open trial succeeds: closed again
        assert tier.breaker.state == "closed"
        server.kill()
        assert tier.get(lasts) == []  # connection refused: a miss, not an exception
        assert tier.stats.errors == 4
    finally:
        server.kill()


def test_a_full_redis_refuses_some_writes_and_the_connection_stays_usable() -> None:
    """`maxmemory` with `noeviction`: Redis answers OOM errors to some SETs of a pipelined put.
    They are counted as write errors in their chunk's place, later replies are not misread, and
    the same connection serves the next calls."""
    server = RedisServer()
    server.start()
    try:
        big = dataclasses.replace(FMT, block_shape=(2, BLOCK, 2, 4096), block_nbytes=256 << 10)
        tier = RedisTier(RedisTierConfig(url=server.url, chunk_blocks=2, ttl_s=600), big)
        blocks = chain(40, fmt=big)
        chunks = [blocks[i : i + 2] for i in range(0, 40, 2)]
        used = int(server.client().info("memory")["used_memory"])
        limit = used + 6 * len(encode_chunk(big, chunks[0]))  # room for a few chunks, not 20
        server.client().config_set("maxmemory-policy", "noeviction")
        server.client().config_set("maxmemory", str(limit))
        written = tier.put(chunks)
        assert 0 < written < len(chunks)
        assert tier.stats.write_errors == len(chunks) - written
        assert tier.breaker.state is BreakerState.CLOSED  # a full Redis answers: it is not down
        lasts = tier.chunk_last_hashes([b.block_hash for b in blocks])
        stored = tier.probe(lasts)
        assert stored == written  # the writes that landed are the leading chunks
        assert tier.get(lasts[:stored]) == blocks[: 2 * stored]
    finally:
        server.kill()
