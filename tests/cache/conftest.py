"""Redis for the cache tests: REDIS_URL when set, else a private redis-server started by
pytest-redis on a free port (never the machine's own Redis); REDIS_CLUSTER_URL when set, else a
private 3-master Redis Cluster (tests/cache/redis_cluster.py) for the cluster-mode tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis
from pytest_redis import factories

from tests.cache.redis_cluster import RedisClusterProcs, cluster_binaries
from tests.cache.redis_server import RedisServer

cache_redis_proc = factories.redis_proc(port=None)


@pytest.fixture
def redis_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of an empty Redis database for one test."""
    url = os.environ.get("REDIS_URL")
    if url is None:
        proc = request.getfixturevalue("cache_redis_proc")
        url = f"redis://{proc.host}:{proc.port}/0"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server subprocess this test may kill, stop, restart and reconfigure (chaos)."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """Seed-node URL of a Redis Cluster: REDIS_CLUSTER_URL when set, else a private 3-master
    cluster of redis-server subprocesses started once per session (about 3 s) and killed at the
    end. Skips only when redis-server / redis-cli are not installed."""
    url = os.environ.get("REDIS_CLUSTER_URL")
    if url is not None:
        yield url
        return
    if cluster_binaries() is None:
        pytest.skip("Redis Cluster tests need redis-server and redis-cli on PATH")
    cluster = RedisClusterProcs()
    cluster.start()
    try:
        yield cluster.url
    finally:
        cluster.stop()
