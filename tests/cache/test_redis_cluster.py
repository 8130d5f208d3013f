"""Redis tier in cluster mode against a real 3-master Redis Cluster: chunks spread over slots
and nodes yet a prefix still round-trips in one pipelined call, TTLs, a missing middle chunk
ending the prefix, corrupt and mismatched values dropped, and an unreachable cluster being a
fast miss rather than an exception (the cluster client connects on first use)."""

from __future__ import annotations

import dataclasses
import signal
import time
import uuid
from collections.abc import Iterator

import pytest
from redis.cluster import RedisCluster

from legato.cache.redis_tier import RedisTier, RedisTierConfig
from tests.cache.kv import FMT, chain
from tests.cache.redis_cluster import RedisClusterProcs, cluster_binaries
from tests.cache.redis_server import free_port


def make_tier(url: str, **kw: object) -> RedisTier:
    return RedisTier(RedisTierConfig(url=url, chunk_blocks=2, ttl_s=600, cluster=True, **kw), FMT)  # type: ignore[arg-type]


@pytest.fixture
def raw(redis_cluster_url: str) -> Iterator[RedisCluster]:
    """A plain cluster client for inspecting and tampering with what the tier stored."""
    client = RedisCluster.from_url(redis_cluster_url, socket_timeout=5)
    yield client
    client.close()


@pytest.fixture
def salt() -> str:
    """A fresh tenant salt per test: its keys are its own even on a shared REDIS_CLUSTER_URL."""
    return uuid.uuid4().hex


def test_chunks_spread_over_nodes_and_round_trip(
    redis_cluster_url: str, raw: RedisCluster, salt: str
) -> None:
    tier = make_tier(redis_cluster_url)
    blocks = chain(64, salt=salt)
    lasts = tier.chunk_last_hashes([b.block_hash for b in blocks])
    assert len(lasts) == 32
    keys = [tier.key(h) for h in lasts]
    nodes = {raw.get_node_from_key(k).name for k in keys}  # type: ignore[no-untyped-call]
    assert len(nodes) >= 2, "32 chunk keys should hash to slots on several masters"
    assert tier.probe(lasts) == 0
    assert tier.put([blocks[i : i + 2] for i in range(0, 64, 2)]) == 32
    assert tier.probe(lasts) == 32
    assert tier.get(lasts) == blocks
    assert tier.stats.hit_chunks == 32 and tier.stats.errors == 0 and tier.stats.write_errors == 0
    # each value sits on the node that owns its slot, whole, with the tier's TTL
    for key in keys:
        node = raw.get_node_from_key(key)  # type: ignore[no-untyped-call]
        owner = raw.get_redis_connection(node)  # that node alone: no MOVED redirect to follow
        assert owner.exists(key) == 1
        assert 0 < raw.ttl(key) <= 600
    rtt = tier.round_trip_s()
    assert rtt is not None and rtt < 1.0
    tier.close()


def test_missing_middle_chunk_ends_the_prefix(redis_cluster_url: str, raw: RedisCluster, salt: str) -> None:
    tier = make_tier(redis_cluster_url)
    blocks = chain(12, salt=salt)
    tier.put([blocks[i : i + 2] for i in range(0, 12, 2)])
    lasts = tier.chunk_last_hashes([b.block_hash for b in blocks])
    assert raw.delete(tier.key(lasts[3])) == 1  # what maxmemory eviction on one node does
    assert tier.probe(lasts) == 3
    assert tier.get(lasts) == blocks[:6]
    assert tier.stats.hit_chunks == 3 and tier.stats.miss_chunks == 3 and tier.stats.errors == 0
    tier.close()


def test_corrupt_and_mismatched_values_are_dropped(
    redis_cluster_url: str, raw: RedisCluster, salt: str
) -> None:
    tier = make_tier(redis_cluster_url)
    blocks = chain(8, salt=salt)
    tier.put([blocks[i : i + 2] for i in range(0, 8, 2)])
    lasts = tier.chunk_last_hashes([b.block_hash for b in blocks])
    key = tier.key(lasts[2])
    value = raw.get(key)
    assert isinstance(value, bytes)
    raw.set(key, value[:-3] + b"zzz")
    assert tier.get(lasts) == blocks[:4]
    assert tier.stats.corrupt == 1 and raw.exists(key) == 0
    other = make_tier(redis_cluster_url)
    other.fmt = dataclasses.replace(FMT, model="other-weights")
    assert other.get(lasts[:2]) == []
    assert other.stats.mismatched == 1 and raw.exists(tier.key(lasts[0])) == 0
    assert raw.exists(tier.key(lasts[1])) == 1  # the read stopped at the first bad chunk
    tier.close()
    other.close()


def test_unreachable_cluster_is_a_fast_miss() -> None:
    """Nothing listens on the seed port: building the tier must not raise (an engine with a down
    cluster still starts), every call is a counted miss, and the breaker opens."""
    tier = make_tier(f"redis://127.0.0.1:{free_port()}", op_timeout_s=0.1, breaker_cooldown_s=30)
    blocks = chain(2)
    start = time.monotonic()
    assert tier.round_trip_s() is None
    assert tier.put([blocks]) == 0
    assert tier.probe([blocks[-1].block_hash]) == 0
    assert time.monotonic() - start < 5.0
    assert tier.stats.errors == 3 and tier.breaker.state == "open"
    assert tier.get([blocks[-1].block_hash]) == [] and tier.stats.refused == 1
    tier.close()


def test_a_stalled_then_killed_node_is_a_miss_and_opens_the_breaker() -> None:
    """One master of a private cluster stops answering, then dies: calls become counted misses
    (redis-py reports the node's commands as errors instead of raising; the tier must still count
    a failure), the breaker opens and then refuses without touching Redis, and after the node
    answers again the half-open trial closes it."""
    if cluster_binaries() is None:
        pytest.skip("Redis Cluster tests need redis-server and redis-cli on PATH")
    cluster = RedisClusterProcs()
    cluster.start()
    try:
        tier = make_tier(cluster.url, op_timeout_s=0.1, breaker_cooldown_s=0.3)
        blocks = chain(40)
        lasts = tier.chunk_last_hashes([b.block_hash for b in blocks])
        assert tier.put([blocks[i : i + 2] for i in range(0, 40, 2)]) == 20
        victim = cluster.procs[1]
        victim.send_signal(signal.SIGSTOP)
        start = time.monotonic()
        for _ in range(3):
            assert tier.probe(lasts) == 0
        assert time.monotonic() - start < 10.0  # op timeouts, not a hang
        assert tier.breaker.state == "open" and tier.stats.errors == 3
        assert tier.get(lasts) == [] and tier.stats.refused == 1
        victim.send_signal(signal.SIGCONT)
        time.sleep(0.35)
        assert tier.probe(lasts) == 20 and tier.breaker.state == "closed"
        victim.kill()
        victim.wait(10)
        for _ in range(3):
            assert tier.probe(lasts) == 0
        assert tier.breaker.state == "open" and tier.stats.errors == 6
        tier.close()
    finally:
        cluster.stop()
