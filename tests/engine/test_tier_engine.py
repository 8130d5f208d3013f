"""The torch engine on real tiers: host-tier reload of evicted blocks, two processes sharing one
Redis, two engines sharing one Redis Cluster, tenant isolation, and Redis chaos (killed,
restarted, corrupted, evicting) never failing a request or changing its greedy output."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import redis
from redis.cluster import RedisCluster

from legato.cache.block_hash import tenant_salt
from legato.engine_adapter.base import GenerateRequest, SamplingParams, collect
from legato.engine_adapter.torch import build_core
from legato.engine_adapter.torch.engine import TorchEngine
from tests.cache import conftest as cache_fixtures
from tests.cache.engine_proc import PROMPT
from tests.cache.redis_server import RedisServer
from tests.engine.conftest import TINY

ROOT = Path(__file__).resolve().parents[2]
# The Redis fixtures of tests/cache (a private redis-server per session, a killable one per test).
cache_redis_proc = cache_fixtures.cache_redis_proc
redis_url = cache_fixtures.redis_url
own_redis = cache_fixtures.own_redis
redis_cluster_url = cache_fixtures.redis_cluster_url


def engine(**overrides: Any) -> TorchEngine:
    overrides.setdefault("num_blocks", 64)
    overrides.setdefault("max_num_batched_tokens", 64)
    overrides.setdefault("redis_chunk_blocks", 4)
    return TorchEngine(build_core(model_config=TINY, **overrides))


def prompt(seed: int, n: int = 200) -> tuple[int, ...]:
    return tuple((i * 31 + seed * 7919) % 250 for i in range(n))


async def greedy(eng: TorchEngine, p: tuple[int, ...], salt: str | None = None) -> list[int]:
    rid = eng.new_request_id()
    result = await collect(eng, GenerateRequest(rid, p, SamplingParams(max_tokens=6), cache_salt=salt))
    return list(result.token_ids)


async def reference(prompts: list[tuple[int, ...]]) -> list[list[int]]:
    """Full recompute on an engine without tiers or a warm cache."""
    out = []
    for p in prompts:
        async with engine(enable_prefix_caching=False) as eng:
            out.append(await greedy(eng, p))
    return out


async def test_host_tier_serves_blocks_evicted_from_the_device() -> None:
    a, b = prompt(1), prompt(2)
    async with engine(num_blocks=20, host_tier_bytes=64 << 20) as eng:
        first = await greedy(eng, a)
        await greedy(eng, b)  # 20 blocks: b's prefill evicts a's blocks to the host tier
        tiers = eng.core.tiers
        assert tiers is not None and tiers.flush()
        before = await eng.stats()
        assert before.offloaded_blocks > 0
        again = await greedy(eng, a)
        after = await eng.stats()
    assert again == first == (await reference([a]))[0]
    assert after.tier_loaded_tokens > 0 and tiers.stats.host_loaded_tokens > 0
    assert after.prefix_hit_tokens - before.prefix_hit_tokens >= after.tier_loaded_tokens


def run_proc(url: str, salt: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "tests.cache.engine_proc", url, salt],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=300,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


async def test_two_engine_processes_share_one_redis(redis_url: str) -> None:
    first = run_proc(redis_url, "")
    assert first["redis_hit_chunks"] == 0 and first["redis_put_chunks"] > 0
    second = run_proc(redis_url, "")
    assert second["redis_hit_chunks"] > 0 and second["tier_loaded_tokens"] > 0
    assert second["computed_prompt_tokens"] < first["computed_prompt_tokens"]
    assert second["tokens"] == first["tokens"] == (await reference([PROMPT]))[0]
    # another tenant asks for the same prompt: not one Redis hit, not one shared key
    keys_before = set(redis.Redis.from_url(redis_url).keys("legato:kv:*"))
    async with engine(redis_url=redis_url, redis_op_timeout_s=1.0) as eng:
        out = await greedy(eng, PROMPT, tenant_salt("bob"))
        tiers = eng.core.tiers
        assert tiers is not None and tiers.redis is not None and tiers.flush()
        assert tiers.redis.stats.hit_chunks == 0 and (await eng.stats()).tier_loaded_tokens == 0
    keys_after = set(redis.Redis.from_url(redis_url).keys("legato:kv:*"))
    assert keys_after > keys_before and not keys_before & (keys_after - keys_before)
    assert out == first["tokens"]  # same weights and prompt: same greedy tokens, computed not shared


async def test_redis_chaos_never_fails_a_request(own_redis: RedisServer) -> None:
    prompts = [prompt(k) for k in range(6)]
    ref = await reference(prompts)
    opts: dict[str, Any] = {"redis_url": own_redis.url, "redis_op_timeout_s": 0.1}

    async def fresh_engine_serves(indices: list[int]) -> TorchEngine:
        eng = engine(**opts)
        async with eng:
            for i in indices:
                assert await greedy(eng, prompts[i]) == ref[i]
            assert eng.core.tiers is not None and eng.core.tiers.flush()
        return eng

    await fresh_engine_serves([0, 1, 2, 3])  # computes and writes through
    warm = await fresh_engine_serves([0])
    assert warm.core.tiers is not None and warm.core.tiers.redis is not None
    assert warm.core.tiers.redis.stats.hit_chunks > 0

    # killed mid-run: requests still complete, lookups miss, the breaker opens
    own_redis.kill()
    dead = engine(**opts)
    async with dead:
        started = time.monotonic()
        for i in [0, 1, 2, 3]:
            assert await greedy(dead, prompts[i]) == ref[i]
        assert time.monotonic() - started < 60
        tiers = dead.core.tiers
        assert tiers is not None and tiers.redis is not None
        assert tiers.redis.stats.errors >= 3 and tiers.redis.breaker.opens >= 1
        assert tiers.redis.stats.hit_chunks == 0
        # restarted (empty): the breaker half-opens after its cooldown, closes, service resumes
        own_redis.start()
        await anyio.sleep(tiers.redis.config.breaker_cooldown_s + 0.1)
        assert await greedy(dead, prompts[4]) == ref[4]
        assert tiers.flush()
        assert tiers.redis.breaker.state == "closed" and tiers.redis.stats.put_chunks > 0
    served = await fresh_engine_serves([4])
    assert served.core.tiers is not None and served.core.tiers.redis is not None
    assert served.core.tiers.redis.stats.hit_chunks > 0

    # a corrupted value is detected, dropped and counted; the output is still right
    client = own_redis.client()
    for key in client.keys("legato:kv:*"):
        value = client.get(key)
        assert value is not None
        client.set(key, value[:-1] + bytes([value[-1] ^ 1]))
    corrupt = await fresh_engine_serves([4])
    assert corrupt.core.tiers is not None and corrupt.core.tiers.redis is not None
    assert corrupt.core.tiers.redis.stats.corrupt >= 1

    # maxmemory eviction of about half the keys: misses, never wrong output
    await fresh_engine_serves([0, 1, 2, 3, 5])
    keys = client.keys("legato:kv:*")
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory-policy", "allkeys-random")
    client.config_set("maxmemory", str(used - len(keys) // 2 * len(client.get(keys[0]) or b"")))
    client.set("trigger-eviction", b"x")
    left = len(client.keys("legato:kv:*"))
    assert 0 < left < len(keys)
    client.config_set("maxmemory", "0")
    evicted = await fresh_engine_serves([0, 1, 2, 3, 5])
    assert evicted.core.tiers is not None and evicted.core.tiers.redis is not None
    stats = evicted.core.tiers.redis.stats
    assert stats.probes >= 5 and stats.hit_chunks < 5 * (200 // 16 // 4)


def cluster_keys(url: str) -> dict[Any, str]:
    """Every tier key in the cluster, read node by node, with the node that holds it."""
    raw = RedisCluster.from_url(url, socket_timeout=5)
    try:
        return {
            key: node.name
            for node in raw.get_primaries()  # type: ignore[no-untyped-call]
            for key in raw.get_redis_connection(node).keys("legato:kv:*")
        }
    finally:
        raw.close()


async def test_second_engine_serves_a_long_prompt_from_redis_cluster(redis_cluster_url: str) -> None:
    """Acceptance for cluster mode: the chunks of one prompt land on several masters, and a fresh
    engine on the same cluster loads them (greedy output unchanged) instead of recomputing."""
    salt = tenant_salt(f"cluster-{uuid.uuid4().hex}")  # own keys, even on a shared cluster
    opts: dict[str, Any] = {"redis_url": redis_cluster_url, "redis_cluster": True, "redis_op_timeout_s": 1.0}
    ref = (await reference([PROMPT]))[0]

    async def serve() -> tuple[list[int], Any, Any, int]:
        async with engine(**opts) as eng:
            out = await greedy(eng, PROMPT, salt)
            tiers = eng.core.tiers
            assert tiers is not None and tiers.redis is not None and tiers.flush()
            return out, tiers.redis, await eng.stats(), eng.core.config.block_size

    before = cluster_keys(redis_cluster_url)
    first, tier1, stats1, block_size = await serve()
    assert tier1.config.cluster and tier1.stats.put_chunks >= 4 and tier1.stats.errors == 0
    written = {k: node for k, node in cluster_keys(redis_cluster_url).items() if k not in before}
    assert len(written) == tier1.stats.put_chunks
    assert len(set(written.values())) >= 2  # the prompt's chunks live on several masters

    second, tier2, stats2, _ = await serve()
    assert tier2.stats.hit_chunks >= 4 and tier2.stats.errors == 0
    assert stats2.tier_loaded_tokens >= 4 * tier2.chunk_blocks * block_size
    computed = [s.prompt_tokens - s.prefix_hit_tokens for s in (stats1, stats2)]
    assert computed[1] < computed[0]
    assert second == first == ref
