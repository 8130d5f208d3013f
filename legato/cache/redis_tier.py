"""Redis tier: KV chunks shared across engine processes and machines.

A chunk is `chunk_blocks` consecutive blocks of a chain, stored as one atomic value
(`kv_codec`) under a key named by the chained hash of its *last* block, which identifies the
whole prefix up to it (weights, layout, dtype and tenant salt included). Only whole chunks are
stored, at chunk-aligned depths, so a reader knows every candidate key from the prompt alone.

Round trips: a whole prefix is probed in one pipelined round trip (EXISTS per chunk key), loaded
in one (pipelined GETs), written in one (pipelined SET with a TTL). Every command names exactly
one key, never a multi-key MGET/DEL, because Redis Cluster refuses a multi-key command whose keys
hash to different slots (CROSSSLOT). Keys are hash-tagged on the chunk hash
(`legato:kv:{<hex>}`), so on Redis Cluster every command about one chunk lands on one slot and a
pipeline is split by node, never a value.

Cluster mode (`RedisTierConfig.cluster`, redis.cluster.RedisCluster): redis-py's ClusterPipeline
groups the queued commands by the node owning each key's slot, writes every node's batch to its
socket first and only then reads the replies node by node (one thread, no multiplexing), and
returns the results in the order queued. So "one round trip" becomes one batch per node, all in
flight at once: the wall time is about the slowest node's round trip plus reading the replies,
not one round trip per node. A reply that is MOVED/ASK (a resharding), or a connection error or
timeout, is retried command by command through the cluster client (which refreshes its slot
map), slow but correct; a command that still fails comes back as an error in its place rather
than raising, and an unreachable node's errors count as a failed call for the circuit breaker.
Cost of a bad node: a dead one (connection refused) fails at once; a stalled one costs about one
`op_timeout_s` per command queued for it on the first failing call (that one-by-one retry:
measured ~4 s for ~40 chunks on the node at 0.1 s), then about one `op_timeout_s` per call until
the breaker opens after `breaker_failures` of them.
PING is not allowed in a cluster pipeline, so the round-trip probe pings one random node. The
cluster client is created on first use, not in the constructor, because RedisCluster connects
to discover the slot map as soon as it is built: an unreachable cluster at engine start is then
a miss and a breaker failure, not a failed engine.

Nothing here may fail a request: every call is bounded by a short socket timeout, errors become
misses, a circuit breaker stops calls to a Redis that keeps failing, and a value that is missing
(Redis evicted it), corrupt or mismatched ends the usable prefix there and is counted; corrupt or
mismatched values are deleted so nobody reads them again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from legato.cache.circuit_breaker import CircuitBreaker
from legato.cache.kv_block import KVBlock
from legato.cache.kv_codec import (
    ChunkCorrupt,
    ChunkError,
    KVFormat,
    decode_chunk,
    encode_chunk,
    encode_chunk_parts,
)
from legato.cache.malloc_tuning import keep_freed_buffers_in_process

KEY_PREFIX = "legato:kv"

# What a call to Redis may raise: RedisClusterException (slot map unavailable, no node for a
# slot) is not a RedisError, and a socket error can surface bare.
CALL_ERRORS = (redis.RedisError, RedisClusterException, OSError)
# Per-command results that mean the node was unreachable, not that the command was refused.
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError)

Command = tuple[str, tuple[Any, ...], dict[str, Any]]


def chunk_key(last_hash: bytes, prefix: str = KEY_PREFIX) -> str:
    """Redis key of the chunk ending with the block `last_hash`, hash-tagged for Cluster."""
    return f"{prefix}:{{{last_hash.hex()}}}"


@dataclass(frozen=True, slots=True)
class RedisTierConfig:
    url: str = "redis://127.0.0.1:6379/0"
    chunk_blocks: int = 16  # blocks per value: a chunk is chunk_blocks * engine block_size tokens
    ttl_s: int = 3600
    op_timeout_s: float = 0.1  # socket timeout of every call: a dead or stalled Redis is a fast miss
    cluster: bool = False  # Redis Cluster (redis.cluster.RedisCluster) instead of one server
    key_prefix: str = KEY_PREFIX
    breaker_failures: int = 3
    breaker_cooldown_s: float = 1.0

    def __post_init__(self) -> None:
        if self.chunk_blocks < 1:
            raise ValueError(f"chunk_blocks must be >= 1, got {self.chunk_blocks}")
        if self.ttl_s < 1:
            raise ValueError(f"ttl_s must be >= 1 second, got {self.ttl_s}")
        if not self.op_timeout_s > 0:
            raise ValueError(f"op_timeout_s must be > 0, got {self.op_timeout_s}")


@dataclass(slots=True)
class RedisTierStats:
    probes: int = 0
    hit_chunks: int = 0
    miss_chunks: int = 0  # probed-present but gone at load (Redis evicted it), or absent at load
    corrupt: int = 0
    mismatched: int = 0
    errors: int = 0  # connection errors and timeouts
    write_errors: int = 0  # e.g. Redis full with noeviction: the write is dropped
    refused: int = 0  # calls skipped because the circuit breaker is open
    put_chunks: int = 0
    bytes_read: int = 0
    bytes_written: int = 0


@dataclass(slots=True)
class RedisTier:
    config: RedisTierConfig
    fmt: KVFormat
    breaker: CircuitBreaker = field(init=False)
    stats: RedisTierStats = field(default_factory=RedisTierStats)
    _client: Any = field(init=False, default=None)  # redis.Redis or redis.cluster.RedisCluster
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _connect_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        cfg = self.config
        self.breaker = CircuitBreaker(cfg.breaker_failures, cfg.breaker_cooldown_s)
        keep_freed_buffers_in_process()  # MiB chunk buffers: no page faults on every allocation
        if not cfg.cluster:
            self._client = redis.Redis.from_url(cfg.url, **self._client_options())  # lazy: no I/O

    def _client_options(self) -> dict[str, Any]:
        t = self.config.op_timeout_s
        # No retries: a failed call is a miss, and the breaker decides when to try again.
        return {"socket_timeout": t, "socket_connect_timeout": t, "retry": Retry(NoBackoff(), 0)}

    @property
    def client(self) -> Any:
        """The Redis client; in cluster mode built (and the slot map fetched) on first use, so a
        cluster that is down when the engine starts raises here, inside a guarded call."""
        if self._client is None:
            with self._connect_lock:
                if self._client is None:
                    from redis.cluster import RedisCluster

                    self._client = RedisCluster.from_url(self.config.url, **self._client_options())
        return self._client

    @property
    def chunk_blocks(self) -> int:
        return self.config.chunk_blocks

    def key(self, last_hash: bytes) -> str:
        return chunk_key(last_hash, self.config.key_prefix)

    def chunk_last_hashes(self, hashes: Sequence[bytes]) -> list[bytes]:
        """Last-block hashes of the whole chunks of a chain (the candidate keys, in order)."""
        c = self.config.chunk_blocks
        return [hashes[i + c - 1] for i in range(0, len(hashes) - c + 1, c)]

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    # --- calls ----------------------------------------------------------------------------

    def _guarded(self, call: Callable[[Any], list[Any]]) -> list[Any] | None:
        """Run `call(client)` through the breaker. None on refusal or failure; a call whose
        results include an unreachable node's error also counts as a failure (in cluster mode
        redis-py returns those per command instead of raising)."""
        if not self.breaker.allow():
            with self._lock:
                self.stats.refused += 1
            return None
        try:
            results = call(self.client)
        except CALL_ERRORS:
            results = None
        if results is None or any(isinstance(r, UNREACHABLE) for r in results):
            self.breaker.failure()
            with self._lock:
                self.stats.errors += 1
            return None
        self.breaker.success()
        return results

    def _execute(self, commands: list[Command]) -> list[Any] | None:
        """One pipelined round trip (one batch per node in cluster mode). None on refusal or
        failure. Commands must name one key each (see the module docstring)."""

        def run(client: Any) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            try:
                for name, args, kwargs in commands:
                    getattr(pipe, name)(*args, **kwargs)
                results: list[Any] = pipe.execute(raise_on_error=False)
                return results
            finally:
                pipe.reset()

        return self._guarded(run)

    def probe(self, last_hashes: Sequence[bytes]) -> int:
        """How many leading chunks are stored (one round trip; errors count as none)."""
        if not last_hashes:
            return 0
        with self._lock:
            self.stats.probes += 1
        results = self._execute([("exists", (self.key(h),), {}) for h in last_hashes])
        if results is None:
            return 0
        n = 0
        for r in results:
            if isinstance(r, Exception) or not r:
                break
            n += 1
        return n

    def get(self, last_hashes: Sequence[bytes]) -> list[KVBlock]:
        """The blocks of the leading chunks that load and check out (one round trip), stopping
        at the first missing, corrupt or mismatched one."""
        if not last_hashes:
            return []
        results = self._execute([("get", (self.key(h),), {}) for h in last_hashes])
        if results is None:
            return []
        out: list[KVBlock] = []
        bad: list[str] = []
        nread = 0
        ok = 0
        for h, value in zip(last_hashes, results, strict=True):
            if isinstance(value, Exception) or value is None:
                break
            nread += len(value)
            try:
                blocks = decode_chunk(self.fmt, value, h)
            except ChunkError as exc:
                bad.append(self.key(h))
                with self._lock:
                    if isinstance(exc, ChunkCorrupt):
                        self.stats.corrupt += 1
                    else:
                        self.stats.mismatched += 1
                break
            if len(blocks) != self.config.chunk_blocks:
                bad.append(self.key(h))
                with self._lock:
                    self.stats.mismatched += 1
                break
            out.extend(blocks)
            ok += 1
        with self._lock:
            self.stats.hit_chunks += ok
            self.stats.miss_chunks += len(last_hashes) - ok
            self.stats.bytes_read += nread
        if bad:
            self._execute([("delete", (k,), {}) for k in bad])  # one key per DEL: no CROSSSLOT
        return out

    def put(self, chunks: Sequence[Sequence[KVBlock]]) -> int:
        """Write whole chunks (one round trip); returns how many Redis accepted."""
        if not chunks:
            return 0
        keys = [self.key(c[-1].block_hash) for c in chunks]
        ttl = self.config.ttl_s
        if self.config.cluster:
            values = [encode_chunk(self.fmt, c) for c in chunks]
            results = self._execute([("set", (k, v), {"ex": ttl}) for k, v in zip(keys, values, strict=True)])
            sizes = [len(v) for v in values]
        else:
            parts = [encode_chunk_parts(self.fmt, c) for c in chunks]
            results = self._guarded(lambda client: _set_framed(client, keys, parts, ttl))
            sizes = [sum(len(p) for p in ps) for ps in parts]
        if results is None:
            return 0
        ok = [r is True or r == b"OK" for r in results]
        written = int(sum(ok))
        with self._lock:
            self.stats.put_chunks += written
            self.stats.write_errors += len(results) - written
            self.stats.bytes_written += sum(n for n, good in zip(sizes, ok, strict=True) if good)
        return written

    def round_trip_s(self) -> float | None:
        """Seconds of one PING, or None when Redis is unreachable (used to seed the cost model)."""
        if not self.config.cluster:
            start = time.perf_counter()
            ok = self._execute([("ping", (), {})]) is not None
            return time.perf_counter() - start if ok else None
        from redis.cluster import RedisCluster

        def ping(client: Any) -> list[Any]:
            # PING is refused in a cluster pipeline, and its default target is every node
            start = time.perf_counter()
            client.ping(target_nodes=RedisCluster.RANDOM)
            return [time.perf_counter() - start]  # timed after the client fetched the slot map

        timed = self._guarded(ping)
        return None if timed is None else float(timed[0])


def _resp_set(key: str, value: list[bytes | memoryview], ttl_s: int) -> bytes:
    """`SET key value EX ttl` in the Redis protocol (RESP), built with one copy of the value."""
    k = key.encode()
    t = str(ttl_s).encode()
    vlen = sum(len(p) for p in value)
    return b"".join(
        [
            b"*5\r\n$3\r\nSET\r\n$%d\r\n" % len(k),
            k,
            b"\r\n$%d\r\n" % vlen,
            *value,
            b"\r\n$2\r\nEX\r\n$%d\r\n" % len(t),
            t,
            b"\r\n",
        ]
    )


def _set_framed(
    client: Any, keys: Sequence[str], values: Sequence[list[bytes | memoryview]], ttl_s: int
) -> list[Any]:
    """Pipelined SETs on one connection of a single Redis, framed here: redis-py would join each
    value into one bytes and then copy it again into its packed command, and those two MiB copies
    per chunk cost a third of the tier's write throughput. Error replies are returned in their
    command's place (like a pipeline with `raise_on_error=False`); a connection error raises."""
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_packed_command([_resp_set(k, v, ttl_s) for k, v in zip(keys, values, strict=True)])
        results: list[Any] = []
        for _ in keys:
            try:
                results.append(conn.read_response())
            except redis.ResponseError as exc:  # e.g. OOM under maxmemory: this chunk only
                results.append(exc)
        return results
    except BaseException:
        conn.disconnect()  # a half-read reply stream must not be reused
        raise
    finally:
        pool.release(conn)
