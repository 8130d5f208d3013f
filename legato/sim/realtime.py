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
import heapq
import itertools
import logging
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import anyio

from legato.cache.block_hash import prefix_block_hashes
from legato.engine_adapter.base import (
    Capability,
    EngineCapacity,
    EngineError,
    GenerateRequest,
    TokenChunk,
)
from legato.engine_adapter.torch.tokenizer import ByteTokenizer
from legato.engine_adapter.worker import WorkerThread
from legato.sim.cost_model import CostModel
from legato.sim.hardware import gpu as gpu_preset
from legato.sim.models import model as model_preset
from legato.sim.realtime_stream import Item, SimStream, deliver, putter, sample, seed_of

log = logging.getLogger(__name__)

_IDLE_WAIT_S = 0.5


@dataclass(frozen=True, slots=True)
class RealtimeSimConfig:
    gpu: str = "h100"
    model: str = "llama-3.1-8b"
    block_size: int = 16
    num_blocks: int | None = None  # None: what the cost model says fits on the GPU
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256
    max_model_len: int = 32768
    time_scale: float = 1.0  # >1 slows the simulated GPU down, <1 speeds it up
    seed: int = 0
    request_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        for name in ("block_size", "max_num_batched_tokens", "max_num_seqs", "max_model_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {self.num_blocks}")
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
        self.cost = CostModel(model_preset(cfg.model), gpu_preset(cfg.gpu))
        self.num_blocks = cfg.num_blocks or self.cost.kv_capacity_blocks(cfg.block_size)
        self.max_model_len = cfg.max_model_len
        self._name = model_name or f"sim-{cfg.model}"
        self._tokenizer = ByteTokenizer()
        self._extra = (self._name, cfg.gpu)
        self._init_worker("legato-sim-realtime", "simulated engine", 30.0)
        self._incoming: list[SimStream] = []
        self._aborts: list[str] = []
        self._seq = itertools.count()
        # --- worker-owned state (read racily by stats(): counters only) ---
        self._waiting: list[tuple[int, int, SimStream]] = []
        self._running: dict[str, SimStream] = {}
        self._ids: set[str] = set()  # every unfinished request id (guarded by _cv)
        self._refs: dict[bytes, int] = {}  # cached blocks referenced by running requests
        self._lru: OrderedDict[bytes, None] = OrderedDict()  # cached, unreferenced: evictable
        self._private = 0  # reserved, not (yet) cached blocks
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
        send, recv = anyio.create_memory_object_stream[Item](max_buffer_size=math.inf)
        req = SimStream(request, next(self._seq), loop, putter(send))
        with self._cv:
            if rid in self._ids:
                raise EngineError(f"request id {rid!r} is already running")
            self._ids.add(rid)
            self._incoming.append(req)
            self._cv.notify()
        finished = False
        try:
            async with recv, send:
                while True:
                    try:
                        # a step delivers its tokens at once: take what is buffered without
                        # paying for a timeout scope per token (measurable at 200 streams)
                        item = recv.receive_nowait()
                    except anyio.WouldBlock:
                        item = None
                    try:
                        if item is None:
                            with anyio.fail_after(self.config.request_timeout_s):
                                item = await recv.receive()
                    except TimeoutError as exc:
                        raise EngineError(
                            f"request {rid!r}: no output for {self.config.request_timeout_s}s"
                        ) from exc
                    if isinstance(item, BaseException):
                        finished = True
                        raise item
                    finished = item.finished
                    yield item
                    if finished:
                        return
        finally:
            if not finished:
                self._abort_nowait(rid)

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
        hashes = self._hashes(token_ids, cache_salt)
        refs, lru = dict(self._refs), set(self._lru)  # copies: the worker mutates the originals
        n = 0
        for h in hashes:
            if h not in refs and h not in lru:
                break
            n += 1
        return n * self.config.block_size

    async def stats(self) -> RealtimeSimStats:
        return self._stats

    # --- worker ----------------------------------------------------------------------------

    def _hashes(self, token_ids: Sequence[int], salt: str | None) -> list[bytes]:
        return prefix_block_hashes(token_ids, self.config.block_size, (*self._extra, salt or ""))

    def _loop(self) -> None:
        try:
            self._run()
        except Exception as exc:  # a bug must fail requests, not hang them
            log.exception("simulated engine worker failed")
            self._fail_all(EngineError(f"simulated engine failed: {exc!r}"))

    def _run(self) -> None:
        while True:
            with self._cv:
                if not self._incoming and not self._aborts and not self._stopping and not self._busy():
                    self._cv.wait(_IDLE_WAIT_S)
                incoming, self._incoming = self._incoming, []
                aborts, self._aborts = self._aborts, []
                stopping = self._stopping
            if stopping:
                self._fail_all(EngineError("simulated engine closed while the request was running"))
                return
            for req in incoming:
                heapq.heappush(self._waiting, (req.request.priority, req.arrival, req))
            for rid in aborts:
                self._abort(rid)
            if not self._busy():
                continue
            started = time.monotonic()
            step_s, out = self._step()
            self._stats.busy_s += step_s
            # Sleep what the simulated GPU would take, minus our own bookkeeping time.
            remaining = step_s * self.config.time_scale - (time.monotonic() - started)
            if remaining > 0:
                time.sleep(remaining)
            deliver(out)

    def _busy(self) -> bool:
        return bool(self._running or self._waiting)

    def _free(self) -> int:
        return self.num_blocks - self._private - len(self._refs) - len(self._lru)

    def _update_stats(self) -> None:
        s = self._stats
        s.used_blocks = self._private + len(self._refs)
        s.cached_blocks = len(self._refs) + len(self._lru)
        s.free_blocks = self.num_blocks - s.used_blocks
        s.running = len(self._running)
        s.waiting = len(self._waiting)

    def _admit(self, budget: int) -> None:
        cfg = self.config
        while self._waiting and len(self._running) < cfg.max_num_seqs and budget > 0:
            _, _, req = self._waiting[0]
            request = req.request
            prompt_len = len(request.prompt_token_ids)
            if not req.hashes:
                req.hashes = self._hashes(request.prompt_token_ids, request.cache_salt)
            hit: list[bytes] = []
            for h in req.hashes[: (prompt_len - 1) // cfg.block_size]:  # the last token is recomputed
                if h not in self._refs and h not in self._lru:
                    break
                hit.append(h)
            need = math.ceil((prompt_len + request.sampling.max_tokens) / cfg.block_size) - len(hit)
            evictable = len(self._lru) - sum(1 for h in hit if h in self._lru)
            if self._free() + evictable < need:
                return  # head of line waits for blocks (priority order is kept)
            heapq.heappop(self._waiting)
            for h in hit:
                self._lru.pop(h, None)
                self._refs[h] = self._refs.get(h, 0) + 1
            while self._free() < need:
                self._lru.popitem(last=False)
                self._stats.evictions += 1
            self._private += need
            req.reserved, req.hit_blocks = need, hit
            req.cached = req.computed = len(hit) * cfg.block_size
            req.rng_state = seed_of(request)
            self._running[request.request_id] = req
            self._stats.prompt_tokens += prompt_len
            if hit:
                self._stats.prefix_hit_requests += 1
                self._stats.prefix_hit_tokens += req.cached
            budget -= prompt_len - req.computed

    def _step(self) -> tuple[float, list[tuple[SimStream, list[Item]]]]:
        cfg = self.config
        budget = cfg.max_num_batched_tokens
        decodes = [r for r in self._running.values() if r.computed >= len(r.request.prompt_token_ids)]
        budget -= len(decodes)
        self._admit(budget)
        tokens = attn_ctx = kv_tokens = 0.0
        out: list[tuple[SimStream, list[Item]]] = []
        finished: list[SimStream] = []
        for req in list(self._running.values()):
            prompt_len = len(req.request.prompt_token_ids)
            if req.computed < prompt_len:  # prefill chunk
                chunk = min(prompt_len - req.computed, max(budget, 0))
                if chunk <= 0:
                    continue
                budget -= chunk
                o = req.computed
                tokens += chunk
                attn_ctx += chunk * o + chunk * (chunk + 1) / 2
                kv_tokens += o + chunk
                req.computed += chunk
                if req.computed < prompt_len:
                    continue
            else:  # decode one token
                p = prompt_len + len(req.output)
                tokens += 1
                attn_ctx += p
                kv_tokens += p
            chunk_out = sample(req)
            self._stats.generated_tokens += 1
            out.append((req, [chunk_out]))
            if chunk_out.finished:
                finished.append(req)
        for req in finished:
            self._finish(req, cache=True)
        self._stats.steps += 1
        self._update_stats()
        step_s = self.cost.step_time(tokens, attn_ctx, kv_tokens) if tokens else 0.0
        return step_s, out

    def _finish(self, req: SimStream, *, cache: bool) -> None:
        rid = req.request.request_id
        self._running.pop(rid, None)
        with self._cv:
            self._ids.discard(rid)
        for h in req.hit_blocks:
            left = self._refs[h] - 1
            if left:
                self._refs[h] = left
            else:
                del self._refs[h]
                self._lru[h] = None
        self._private -= req.reserved
        if not cache:
            return
        sequence = (*req.request.prompt_token_ids, *req.output)
        for h in self._hashes(sequence, req.request.cache_salt):
            if h in self._refs:
                continue
            if h in self._lru:
                self._lru.move_to_end(h)
            elif self._free() > 0:
                self._lru[h] = None
            else:
                break  # its own reserved blocks went back above, so only a shared hit fills up

    def _abort(self, rid: str) -> None:
        req = self._running.get(rid)
        if req is not None:
            self._finish(req, cache=False)
            deliver([(req, [TokenChunk((), finished=True, finish_reason="abort")])])
        else:
            kept = [entry for entry in self._waiting if entry[2].request.request_id != rid]
            if len(kept) != len(self._waiting):
                self._waiting = kept
                heapq.heapify(kept)
            with self._cv:
                self._ids.discard(rid)
        self._update_stats()

    def _fail_all(self, error: EngineError) -> None:
        reqs = [*self._running.values(), *(entry[2] for entry in self._waiting)]
        with self._cv:
            reqs.extend(self._incoming)
            self._incoming = []
            self._ids.clear()
        self._running.clear()
        self._waiting.clear()
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
