"""`RealtimeSimEngine`: the simulator's cost model behind the `Engine` protocol, in real time.

Load-testing the service (HTTP, scheduler, proxy, streaming) needs an engine that behaves like a
GPU-backed one — batches grow step times, prefixes hit a cache, KV fills up — without a GPU and
without burning the CPU that the service under test needs. This engine runs vLLM-like continuous
batching in a worker thread: every step it admits queued requests (priority, then arrival) while
seats, token budget and KV blocks last, prices the step with the roofline `CostModel` of a
GPU/model preset, **sleeps** that long (times `time_scale`), and emits one token per running
decode. Tokens are fake but deterministic: a function of the prompt, the request seed and the
position, drawn from lower-case letters and spaces (so the text is readable and stop strings
work), with their exact uniform logprob.

KV accounting is deliberately simpler than `legato.sim.engine` (no preemption):
a request reserves blocks for prompt + max_tokens when it is admitted, so it never runs out
mid-decode; a request that could never fit is refused up front with `EngineError`. Full blocks
of a finished sequence enter an LRU prefix cache keyed by chained block hashes
(`legato.cache.block_hash`, salted with the request's cache salt), so a later call that extends
the same conversation reports `cached_tokens` and skips that prefill work, as a real engine does.

Why a thread and not an anyio task: the engine must start on first use from any caller (the
torch engine does the same) and its clock must not depend on how busy the event loop is.
Outputs of one step are delivered to the event loop in one `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import math
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from legato.cache.block_hash import prefix_block_hashes
from legato.engine_adapter.base import (
    Capability,
    EngineCapacity,
    EngineError,
    GenerateRequest,
    TokenChunk,
)
from legato.engine_adapter.mailbox import Mailbox
from legato.engine_adapter.torch.tokenizer import ByteTokenizer
from legato.engine_adapter.worker import WorkerThread, receive_outputs
from legato.sim.cost_model import CostModel
from legato.sim.engine import DECODE, SimEngine, SimRequest
from legato.sim.hardware import gpu as gpu_preset
from legato.sim.kv_pool import KVPool
from legato.sim.models import model as model_preset
from legato.sim.realtime_stream import Item, SimStream, deliver, planned_output, putter, sample, seed_of
from legato.sim.workload import Segment

log = logging.getLogger(__name__)

_IDLE_WAIT_S = 0.5


@dataclass(frozen=True, slots=True)
class RealtimeSimConfig:
    gpu: str = "h100"
    model: str = "llama-3.1-8b"
    block_size: int = 16
    num_blocks: int | None = None  # None: what the cost model says fits on the GPU
    max_num_batched_tokens: int | None = None  # None: the GPU's `vllm serve` default (`GPUSpec`)
    max_num_seqs: int | None = None  # ... likewise
    max_model_len: int = 32768
    time_scale: float = 1.0  # >1 slows the simulated GPU down, <1 speeds it up
    seed: int = 0
    request_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        for name in ("block_size", "max_num_batched_tokens", "max_num_seqs", "max_model_len", "num_blocks"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not self.time_scale >= 0:
            raise ValueError(f"time_scale must be >= 0, got {self.time_scale}")


@dataclass(slots=True)
class RealtimeSimStats:
    """Counters named like the torch engine's `EngineStats`, so metrics read either."""

    total_blocks: int
    free_blocks: int
    used_blocks: int
    cached_blocks: int
    running: int
    waiting: int
    steps: int
    evictions: int
    prefix_hit_requests: int
    prefix_hit_tokens: int
    prompt_tokens: int
    generated_tokens: int
    busy_s: float


class RealtimeSimEngine(WorkerThread):
    """Implements `Engine` (with `Capability.PREFIX_QUERY`, `PRIORITY`, `LOGPROBS`)."""

    def __init__(self, config: RealtimeSimConfig | None = None, *, model_name: str | None = None) -> None:
        self.config = cfg = config or RealtimeSimConfig()
        gpu = gpu_preset(cfg.gpu)
        step_tokens, seats = gpu.batch_limits(cfg.max_num_batched_tokens, cfg.max_num_seqs)
        self.cost = CostModel(model_preset(cfg.model), gpu)
        self.num_blocks = cfg.num_blocks or self.cost.kv_capacity_blocks(cfg.block_size)
        self.max_model_len = cfg.max_model_len
        self._name = model_name or f"sim-{cfg.model}"
        self._tokenizer = ByteTokenizer()
        self._extra = (self._name, cfg.gpu)
        self._init_worker("legato-sim-realtime", "simulated engine", 30.0)
        self._incoming: list[SimStream] = []
        self._aborts: list[str] = []
        self._seq = itertools.count()
        self._ids: set[str] = set()  # every unfinished request id (guarded by _cv)
        # --- worker-owned state (read racily by stats() and cached_prefix_tokens()) ---
        self.replica = SimEngine(
            0,
            self.cost,
            KVPool(self.num_blocks, cfg.block_size),
            max_num_batched_tokens=step_tokens,
            max_num_seqs=seats,
        )
        self._live: dict[str, SimStream] = {}  # added to the replica, not finished
        self._by_sim: dict[int, SimStream] = {}  # id(SimRequest) -> its stream
        self._seg_ids: dict[bytes, int] = {}  # block hash -> segment id
        self._seg_hash: dict[int, bytes] = {}  # its inverse, to forget the ids of pruned nodes
        self._prune_at = 2 * self.num_blocks  # see `_bound_memory`
        self._seg_counter = itertools.count()
        self._runs = itertools.count()
        self._origin = time.monotonic()
        self._vnow = 0.0
        self._stats = RealtimeSimStats(self.num_blocks, self.num_blocks, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0.0)

    # --- Engine protocol: properties -------------------------------------------------------

    @property
    def model_name(self) -> str:
        return self._name

    @property
    def capabilities(self) -> frozenset[Capability]:
        return frozenset({Capability.PREFIX_QUERY, Capability.PRIORITY, Capability.LOGPROBS})

    @property
    def tokenizer(self) -> ByteTokenizer:
        return self._tokenizer

    # --- Engine protocol: calls ------------------------------------------------------------

    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenChunk]:
        if self._closed:
            raise EngineError("simulated engine is closed")
        _check(self, request)
        self.start()
        rid = request.request_id
        loop = asyncio.get_running_loop()
        box = Mailbox[Item](stall_s=self.config.request_timeout_s)
        req = SimStream(request, next(self._seq), loop, putter(box))
        with self._cv:
            if rid in self._ids:
                raise EngineError(f"request id {rid!r} is already running")
            self._ids.add(rid)
            self._incoming.append(req)
            self._cv.notify()
        outputs = receive_outputs(box, rid, self._abort_nowait)
        async with contextlib.aclosing(outputs):
            async for item in outputs:
                yield item

    def _abort_nowait(self, request_id: str) -> None:
        with self._cv:
            if request_id in self._ids:
                self._aborts.append(request_id)
                self._cv.notify()

    async def abort(self, request_id: str) -> None:
        self._abort_nowait(request_id)

    async def capacity(self) -> EngineCapacity:
        s = self._stats
        return EngineCapacity(self.config.block_size, self.num_blocks, s.free_blocks)

    async def cached_prefix_tokens(self, token_ids: Sequence[int], cache_salt: str | None = None) -> int:
        bs = self.config.block_size
        segs = [Segment(self._seg_ids.get(h, -1), bs) for h in self._hashes(token_ids, cache_salt)]
        return self.replica.pool.match_tokens(segs)  # a racy read of the worker's tree: a hint

    async def stats(self) -> RealtimeSimStats:
        return self._stats

    # --- worker ----------------------------------------------------------------------------

    def _hashes(self, token_ids: Sequence[int], salt: str | None) -> list[bytes]:
        return prefix_block_hashes(token_ids, self.config.block_size, (*self._extra, salt or ""))

    def _segments(self, token_ids: Sequence[int], salt: str | None) -> list[Segment]:
        """The prompt's full blocks as segments named by their chained hashes (shared ids for
        shared prefixes); the partial last block is not cacheable and is left out."""
        bs = self.config.block_size
        segs = []
        for h in self._hashes(token_ids, salt):
            seg_id = self._seg_ids.get(h)
            if seg_id is None:
                seg_id = self._seg_ids[h] = next(self._seg_counter)
                self._seg_hash[seg_id] = h
            segs.append(Segment(seg_id, bs))
        return segs

    def _loop(self) -> None:
        try:
            self._run()
        except Exception as exc:  # a bug must fail requests, not hang them
            log.exception("simulated engine worker failed")
            self._fail_all(EngineError(f"simulated engine failed: {exc!r}"))

    def _clock(self) -> float:
        """Virtual time: the wall clock divided by the time scale, never going back."""
        if self.config.time_scale > 0:
            self._vnow = max(self._vnow, (time.monotonic() - self._origin) / self.config.time_scale)
        return self._vnow

    def _run(self) -> None:
        e = self.replica
        idle = True
        while True:
            with self._cv:
                if not self._incoming and not self._aborts and not self._stopping and idle:
                    self._cv.wait(_IDLE_WAIT_S)
                incoming, self._incoming = self._incoming, []
                aborts, self._aborts = self._aborts, []
                stopping = self._stopping
            if stopping:
                self._fail_all(EngineError("simulated engine closed while the request was running"))
                return
            for req in incoming:
                self._add(req)
            for rid in aborts:
                self._cancel(rid, abort=True)
            end = e.plan(self._clock()) if self._live else None
            idle = end is None  # nothing runnable: wait for an event instead of spinning
            if idle:
                self._update_stats()
                continue
            self._fly()

    def _add(self, req: SimStream) -> None:
        """The request joins the replica. Its output is known in advance (a function of the
        request), so the whole sequence, prompt and output, is named by block hashes: a later
        turn that extends this conversation hits its output blocks too."""
        request = req.request
        n, bs = len(request.prompt_token_ids), self.config.block_size
        sequence = (*request.prompt_token_ids, *planned_output(request))
        segs = self._segments(sequence, request.cache_salt)
        tail = len(sequence) - len(segs) * bs
        if tail:
            segs.append(Segment(next(self._seg_counter), tail))
        max_tokens = request.sampling.max_tokens
        sim = SimRequest(request.request_id, next(self._runs), n, max_tokens, request.priority)
        self.replica.add(sim, tuple(segs[:-1]), segs[-1])
        req.sim = sim
        req.rng_state = seed_of(request)
        self._by_sim[id(sim)] = req
        self._live[request.request_id] = req
        self._stats.prompt_tokens += n
        self._bound_memory()

    def _bound_memory(self) -> None:
        """Keep the radix tree, the seg-id map and the eviction heap proportional to the pool,
        not to every block ever served. What must stay is at most `num_blocks` nodes holding a
        cached block (every full-block segment is one block) plus the paths of the requests in
        the replica; the rest is pruned once the tree is twice the larger of the pool and what
        survived the last prune. The factor 2 is the geometric-growth argument, not a tuned
        value: any factor above 1 makes the walk amortised O(1) per node created (at least half
        the nodes walked are new since the last prune); 2 caps the waste at what is needed. The
        heap holds at most one valid entry per cached node, so it is compacted past 2 x pool."""
        pool = self.replica.pool
        if pool.n_nodes > self._prune_at:
            for seg_id in self.replica.prune_pool():
                h = self._seg_hash.pop(seg_id, None)
                if h is not None:
                    del self._seg_ids[h]
            self._prune_at = 2 * max(self.num_blocks, pool.n_nodes)
        elif pool.heap_len > 2 * self.num_blocks:
            pool.compact_heap()

    def _fly(self) -> None:
        """Sleep through the step (or decode jump) in flight, streaming each step's tokens; an
        outside event cuts a jump short at the next step boundary."""
        e = self.replica
        scale = self.config.time_scale
        wall0, t0, n0, ctx0 = time.monotonic(), e.t0, e.n_flight, e.ctx0
        decoding = [s for s in self._live.values() if s.sim is not None and s.sim.state == DECODE]
        prefilled = [self._by_sim[id(r)] for r, c in e.chunks if r.computed + c >= r.prefill_target]
        stopped: list[SimStream] = []
        i = 0
        while i < e.k:
            i += 1
            t_i = e.t_end if e.k == 1 else t0 + self.cost.decode_run_time(n0, ctx0, i)
            remaining = wall0 + (t_i - t0) * scale - time.monotonic()
            if remaining > 0:
                time.sleep(remaining)
            out: list[tuple[SimStream, list[Item]]] = []
            for req in (*decoding, *prefilled) if i == e.k else decoding:
                chunk = sample(req)
                if not req.cached and len(req.output) == 1 and req.sim is not None and req.sim.hit_tokens > 0:
                    req.cached = req.sim.hit_tokens
                    chunk = dataclasses.replace(chunk, cached_tokens=req.cached)
                    self._stats.prefix_hit_requests += 1
                    self._stats.prefix_hit_tokens += req.cached
                self._stats.generated_tokens += 1
                out.append((req, [chunk]))
                if chunk.finished:
                    stopped.append(req)
            deliver(out)
            if stopped:
                gone = {id(s) for s in stopped}
                decoding = [s for s in decoding if id(s) not in gone]
            if i < e.k and (stopped or self._incoming or self._aborts or self._stopping):
                e.truncate(t_i)
        e.complete(e.t_end)
        self._vnow = max(self._vnow, e.t_end)
        for req in stopped:
            self._cancel(req.request.request_id, abort=False)
        self._stats.steps = e.stats.steps
        self._stats.busy_s = e.stats.busy_s
        self._update_stats()

    def _cancel(self, rid: str, *, abort: bool) -> None:
        """Drop a request from the replica (finished, stopped early or aborted)."""
        req = self._live.pop(rid, None)
        if req is None:
            return
        with self._cv:
            self._ids.discard(rid)
        sim = req.sim
        if sim is not None:
            self._by_sim.pop(id(sim), None)
            self.replica.cancel(sim, self._vnow)  # a no-op for a request the replica finished
            self.replica.forget_run(sim.run, self._vnow)
        if abort:
            deliver([(req, [TokenChunk((), finished=True, finish_reason="abort")])])
        self._update_stats()

    def _update_stats(self) -> None:
        s, e, pool = self._stats, self.replica, self.replica.pool
        s.free_blocks = pool.available
        s.used_blocks = pool.used - pool.evictable
        s.cached_blocks = pool.cached_total
        s.running = e.running
        s.waiting = e.n_waiting + e.n_parked
        s.evictions = pool.evicted_blocks

    def _fail_all(self, error: EngineError) -> None:
        reqs = list(self._live.values())
        with self._cv:
            reqs.extend(self._incoming)
            self._incoming = []
            self._ids.clear()
        self._live.clear()
        deliver([(req, [error]) for req in reqs])


def _check(engine: RealtimeSimEngine, request: GenerateRequest) -> None:
    """Refuse a request the engine could never serve (empty, too long, too many blocks, bad ids)."""
    n = len(request.prompt_token_ids)
    if n < 1:
        raise EngineError("the prompt is empty")
    total = n + request.sampling.max_tokens
    if total > engine.max_model_len:
        raise EngineError(
            f"prompt ({n} tokens) + max_tokens ({request.sampling.max_tokens}) exceeds the "
            f"context of {engine.max_model_len} tokens"
        )
    if math.ceil(total / engine.config.block_size) > engine.num_blocks:
        raise EngineError(
            f"prompt + max_tokens ({total} tokens) needs more KV blocks than the engine has "
            f"({engine.num_blocks} blocks of {engine.config.block_size})"
        )
    vocab = engine.tokenizer.vocab_size
    if any(not 0 <= t < vocab for t in request.prompt_token_ids):
        raise EngineError(f"prompt holds token ids outside the vocabulary [0, {vocab})")


SPEC_PREFIX = "sim-realtime"


def from_spec(spec: str) -> RealtimeSimEngine:
    """`sim-realtime` or `sim-realtime:gpu=a10,model=llama-3.1-8b,time_scale=2,num_blocks=4096`
    (what `legato serve --engine` accepts) -> an engine. Unknown keys or bad values raise
    ValueError with the valid choices."""
    name, _, params = spec.partition(":")
    if name != SPEC_PREFIX:
        raise ValueError(f"not a {SPEC_PREFIX} engine spec: {spec!r}")
    fields = {f.name: f.type for f in RealtimeSimConfig.__dataclass_fields__.values()}
    kwargs: dict[str, object] = {}
    for item in filter(None, params.split(",")):
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise ValueError(f"{spec!r}: use key=value pairs with keys {', '.join(sorted(fields))}")
        kind = str(fields[key])
        try:
            kwargs[key] = float(value) if "float" in kind else int(value) if "int" in kind else value
        except ValueError:
            raise ValueError(f"{spec!r}: {key} must be a number, got {value!r}") from None
    return RealtimeSimEngine(RealtimeSimConfig(**kwargs))  # type: ignore[arg-type]
