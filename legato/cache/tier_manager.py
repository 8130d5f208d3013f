"""The tier manager: what goes below the device, and whether to load it back or recompute.

Writes never touch the engine's critical path: the engine hands over copies of blocks (evicted
ones for the host tier, freshly prefilled whole chunks for Redis) through a bounded queue that a
writer thread drains; when the queue is full the write is dropped and counted, never waited for.
Only blocks worth keeping are written: a block whose predicted next use is further away than
`reuse_horizon_s` is not (unhinted blocks count as worth keeping when `keep_unhinted`, since the
embedded engine serves without a scheduler too).

Reads happen before a request enters the engine (off its step loop): `fetch` finds, in one pass,
how far the host tier and Redis (one pipelined probe) extend the device's cached prefix, asks
`plan_load` whether loading beats recomputing given each tier's *measured* bandwidth and round
trip and the engine's measured prefill cost, and loads what the plan says. A short or failed
load just means more recompute: nothing here raises into a request.
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from legato.cache.host_tier import HostTier
from legato.cache.kv_block import KVBlock
from legato.cache.kv_codec import KVFormat
from legato.cache.load_cost import LoadPlan, TierCost, plan_load
from legato.cache.redis_tier import RedisTier

_WRITTEN_CAP = 65536


@dataclass(slots=True)
class TierEstimate:
    """Measured cost of a tier, an exponentially weighted average of real loads."""

    name: str
    bandwidth_bytes_per_s: float
    round_trip_s: float
    alpha: float = 0.3

    def cost(self) -> TierCost:
        return TierCost(self.name, self.bandwidth_bytes_per_s, self.round_trip_s)

    def observe_round_trip(self, seconds: float) -> None:
        self.round_trip_s += self.alpha * (seconds - self.round_trip_s)

    def observe_load(self, nbytes: int, seconds: float) -> None:
        transfer = seconds - self.round_trip_s
        if nbytes < 65536 or transfer <= 0:
            return  # too small to say anything about bandwidth
        self.bandwidth_bytes_per_s += self.alpha * (nbytes / transfer - self.bandwidth_bytes_per_s)


@dataclass(slots=True)
class TierStats:
    fetches: int = 0
    planned_load_tokens: int = 0
    host_loaded_tokens: int = 0
    redis_loaded_tokens: int = 0
    load_decisions: int = 0  # fetches where the plan chose to load blocks from a tier
    recompute_decisions: int = 0  # fetches where a tier held more but the plan chose recompute
    queued_writes: int = 0
    dropped_writes: int = 0  # queue full: backpressure, the write is skipped
    failed_writes: int = 0
    prefetches: int = 0
    last_plan: LoadPlan | None = None


@dataclass(slots=True)
class _Job:
    kind: str  # "host" | "redis" | "prefetch"
    blocks: list[KVBlock]
    parent: bytes | None
    depth: int
    tenant: str
    next_use: float


@dataclass(slots=True)
class TierManager:
    fmt: KVFormat
    block_size: int
    host: HostTier | None = None
    redis: RedisTier | None = None
    prefill_s: Callable[[int, int], float] = lambda s, e: 1e-4 * (e - s)
    keep_unhinted: bool = True
    reuse_horizon_s: float = math.inf
    queue_size: int = 256
    clock: Callable[[], float] = time.monotonic
    stats: TierStats = field(default_factory=TierStats)
    host_cost: TierEstimate = field(default_factory=lambda: TierEstimate("host", 4e9, 2e-5))
    redis_cost: TierEstimate = field(default_factory=lambda: TierEstimate("redis", 5e8, 1e-3))
    _queue: queue.Queue[_Job | None] = field(init=False)
    _thread: threading.Thread | None = field(init=False, default=None)
    _written: OrderedDict[bytes, float] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.redis is not None and self.redis.chunk_blocks < 1:
            raise ValueError("redis chunk_blocks must be >= 1")
        self._queue = queue.Queue(maxsize=self.queue_size)
        if self.redis is not None:
            rtt = self.redis.round_trip_s()
            if rtt is not None:
                self.redis_cost.round_trip_s = rtt

    @property
    def bytes_per_token(self) -> float:
        return self.fmt.block_nbytes / self.block_size

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._writer, name="legato-tier-writer", daemon=True)
            self._thread.start()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until queued writes are done (tests, benchmarks and shutdown); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        """Finish queued writes (bounded by `timeout_s`), stop the writer, close Redis."""
        if self._thread is not None:
            self.flush(timeout_s)
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=timeout_s)
            self._thread.join(timeout_s)
            self._thread = None
        if self.redis is not None:
            self.redis.close()

    # --- writes (called on the engine thread: must not block) ----------------------------

    def worth_keeping(self, next_use: float) -> bool:
        """Predicted reuse: `next_use` is a monotonic deadline (inf = no prediction)."""
        if math.isinf(next_use):
            return self.keep_unhinted
        return next_use - self.clock() <= self.reuse_horizon_s

    def wants_host(self, next_use: float) -> bool:
        return self.host is not None and self.worth_keeping(next_use)

    def offload(self, block: KVBlock, parent: bytes | None, depth: int, tenant: str, next_use: float) -> bool:
        """Queue an evicted device block for the host tier; False if dropped."""
        return self._enqueue(_Job("host", [block], parent, depth, tenant, next_use))

    def chunks_to_write(self, hashes: Sequence[bytes], next_use: float = math.inf) -> list[int]:
        """Indices of the whole chunks of the chain `hashes` that Redis should get (not written
        recently by this process, worth keeping); marks them as written."""
        if self.redis is None or not self.worth_keeping(next_use):
            return []
        c = self.redis.chunk_blocks
        now = self.clock()
        fresh_s = min(self.redis.config.ttl_s / 2, 60.0)
        out: list[int] = []
        with self._lock:
            for i in range(len(hashes) // c):
                last = hashes[(i + 1) * c - 1]
                at = self._written.get(last)
                if at is not None and now - at < fresh_s:
                    continue
                self._written[last] = now
                self._written.move_to_end(last)
                out.append(i)
            while len(self._written) > _WRITTEN_CAP:
                self._written.popitem(last=False)
        return out

    def write_chunks(self, blocks: Sequence[KVBlock], first_depth: int, tenant: str, next_use: float) -> bool:
        """Queue whole chunks (consecutive blocks, chunk-aligned `first_depth`) for Redis."""
        return self._enqueue(_Job("redis", list(blocks), None, first_depth, tenant, next_use))

    def _enqueue(self, job: _Job) -> bool:
        self.start()
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            with self._lock:
                self.stats.dropped_writes += 1
                if job.kind == "redis":
                    for i in range(len(job.blocks) // max(1, self._chunk_blocks())):
                        self._written.pop(job.blocks[(i + 1) * self._chunk_blocks() - 1].block_hash, None)
            return False
        with self._lock:
            self.stats.queued_writes += 1
        return True

    def _chunk_blocks(self) -> int:
        return self.redis.chunk_blocks if self.redis is not None else 1

    def _writer(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                self._run_job(job)
            except Exception:  # a failed write is a lost cache entry, never a crash
                with self._lock:
                    self.stats.failed_writes += 1
            finally:
                self._queue.task_done()

    def _run_job(self, job: _Job) -> None:
        if job.kind == "host" and self.host is not None:
            self.host.put(job.blocks, job.parent, job.depth, job.tenant, job.next_use)
        elif job.kind == "redis" and self.redis is not None:
            c = self.redis.chunk_blocks
            chunks = [job.blocks[i : i + c] for i in range(0, len(job.blocks) - c + 1, c)]
            written = self.redis.put(chunks)
            if written < len(chunks):
                with self._lock:
                    self.stats.failed_writes += len(chunks) - written
                    for chunk in chunks:
                        self._written.pop(chunk[-1].block_hash, None)
        elif job.kind == "prefetch" and self.redis is not None and self.host is not None:
            hashes = [b.block_hash for b in job.blocks]  # placeholder blocks carry only hashes
            blocks = self._load_redis(hashes, 0, len(hashes))
            if blocks:
                self.host.put(blocks, None, 0, job.tenant, job.next_use)

    # --- reads (called off the engine thread) --------------------------------------------

    def _redis_reach(self, hashes: Sequence[bytes], device_blocks: int) -> int:
        """Blocks of `hashes` that the device and Redis together hold contiguously from 0."""
        if self.redis is None:
            return device_blocks
        c = self.redis.chunk_blocks
        first = device_blocks // c
        lasts = self.redis.chunk_last_hashes(hashes)[first:]
        start = time.perf_counter()
        n = self.redis.probe(lasts)
        if lasts and self.redis.breaker.state == "closed":
            self.redis_cost.observe_round_trip(time.perf_counter() - start)
        return max(device_blocks, (first + n) * c) if n else device_blocks

    def plan(self, hashes: Sequence[bytes], device_blocks: int) -> LoadPlan:
        """Where each block of the chain beyond the device should come from (one pass over the
        tiers: host lookup plus one Redis probe)."""
        return self._plan(hashes, device_blocks)[0]

    def _plan(self, hashes: Sequence[bytes], device_blocks: int) -> tuple[LoadPlan, int]:
        """The plan, and the furthest token any tier could have supplied."""
        bs = self.block_size
        host_reach = self.host.reach(hashes, device_blocks) if self.host is not None else device_blocks
        tiers: list[tuple[TierCost, int]] = []
        if self.host is not None:
            tiers.append((self.host_cost.cost(), host_reach * bs))
        if self.redis is not None:
            tiers.append((self.redis_cost.cost(), self._redis_reach(hashes, device_blocks) * bs))
        reach = max([device_blocks * bs, *(n for _, n in tiers)])
        return plan_load(device_blocks * bs, tiers, self.bytes_per_token, self.prefill_s), reach

    def fetch(self, hashes: Sequence[bytes], device_blocks: int) -> list[KVBlock]:
        """Blocks to import so the device holds a longer prefix of `hashes`: contiguous from
        `device_blocks`, as the cost model decides (empty when recomputing is cheaper)."""
        with self._lock:
            self.stats.fetches += 1
        if device_blocks >= len(hashes) or (self.host is None and self.redis is None):
            return []
        plan, reach = self._plan(hashes, device_blocks)
        bs = self.block_size
        with self._lock:
            self.stats.last_plan = plan
            self.stats.planned_load_tokens += plan.loaded_tokens
            if plan.loaded_tokens > 0:
                self.stats.load_decisions += 1
            if plan.recompute_from < reach:  # a tier held more, but recomputing it is cheaper
                self.stats.recompute_decisions += 1
        out: list[KVBlock] = []
        for tier, start_tok, end_tok in plan.loads:
            lo, hi = start_tok // bs, end_tok // bs
            if lo != device_blocks + len(out):
                break  # an earlier load came up short: the rest would not chain
            got = self._load_host(hashes, lo, hi) if tier == "host" else self._load_redis(hashes, lo, hi)
            out.extend(got)
            if len(got) < hi - lo:
                break
        return out

    def _load_host(self, hashes: Sequence[bytes], lo: int, hi: int) -> list[KVBlock]:
        assert self.host is not None
        start = time.perf_counter()
        blocks = self.host.get(hashes[lo:hi])
        self.host_cost.observe_load(sum(len(b.data) for b in blocks), time.perf_counter() - start)
        with self._lock:
            self.stats.host_loaded_tokens += len(blocks) * self.block_size
        return blocks

    def _load_redis(self, hashes: Sequence[bytes], lo: int, hi: int) -> list[KVBlock]:
        """Blocks `[lo, hi)` from the Redis chunks covering them (chunks may start before `lo`)."""
        assert self.redis is not None
        c = self.redis.chunk_blocks
        first, last = lo // c, -(-hi // c)
        lasts = self.redis.chunk_last_hashes(hashes)[first:last]
        start = time.perf_counter()
        blocks = self.redis.get(lasts)
        if blocks:
            self.redis_cost.observe_load(sum(len(b.data) for b in blocks), time.perf_counter() - start)
        got = blocks[lo - first * c : hi - first * c]
        with self._lock:
            self.stats.redis_loaded_tokens += len(got) * self.block_size
        return got

    # --- scheduler hooks ------------------------------------------------------------------

    def prefetch(self, hashes: Sequence[bytes], tenant: str, next_use: float = math.inf) -> bool:
        """Pull the Redis chunks of a prefix into the host tier in the background (the scheduler
        asks ahead of a predicted call); False when dropped or there is nothing to do."""
        if self.redis is None or self.host is None:
            return False
        lasts = self.redis.chunk_last_hashes(hashes)
        n = len(lasts) * self.redis.chunk_blocks
        placeholders = [KVBlock(h, (), "", "", (), b"") for h in hashes[:n]]
        with self._lock:
            self.stats.prefetches += 1
        return self._enqueue(_Job("prefetch", placeholders, None, 0, tenant, next_use))

    def set_next_use(self, hashes: Sequence[bytes], deadline: float) -> None:
        if self.host is not None:
            self.host.set_next_use(hashes, deadline)

    def pin(self, hashes: Sequence[bytes], tenant: str, ttl_s: float, hard: bool = False) -> str:
        """Pin a prefix in the host tier (see HostTier.pin: hard pins are quota-bounded)."""
        if self.host is None:
            raise ValueError("no host tier to pin in")
        return self.host.pin(hashes, tenant, ttl_s, hard)[0]

    def unpin(self, pin_id: str) -> bool:
        return self.host is not None and self.host.unpin(pin_id)
