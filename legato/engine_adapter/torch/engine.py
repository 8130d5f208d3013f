"""`TorchEngine`: the async `Engine` over `EngineCore`, with the engine loop in a worker thread.

The worker thread owns the core: every call that touches engine state (adding and aborting
requests, pins, hints, KV export/import, stats) is queued as a command and executed by the worker
between steps, so the core needs no locks and a forward pass never blocks the event loop. Results
flow back per request through a `Mailbox` fed with `loop.call_soon_threadsafe`.

Lifecycle: the thread starts on first use (or `async with engine`); `await engine.close()` stops
it, fails whatever is still pending with `EngineError`, and joins it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import anyio

from legato.cache.block_hash import prefix_block_hashes
from legato.cache.host_tier import HostTier
from legato.cache.redis_tier import RedisTier, RedisTierConfig
from legato.cache.tier_manager import TierManager
from legato.engine_adapter.base import (
    Capability,
    EngineCapacity,
    EngineError,
    GenerateRequest,
    KVBlock,
    TokenChunk,
)
from legato.engine_adapter.mailbox import Mailbox
from legato.engine_adapter.torch.checkpoint import build_default_model, load_checkpoint
from legato.engine_adapter.torch.config import EngineConfig, ModelConfig
from legato.engine_adapter.torch.core import EngineCore
from legato.engine_adapter.torch.outputs import EngineStats, RequestOutput
from legato.engine_adapter.torch.tokenizer import ByteTokenizer, HFTokenizer
from legato.engine_adapter.torch.weight_control import WeightControl
from legato.engine_adapter.worker import WorkerThread, receive_outputs

log = logging.getLogger(__name__)
T = TypeVar("T")
_Item = RequestOutput | BaseException
_IDLE_WAIT_S = 0.5  # worker wake-up period when idle (pin expiry needs no precision)
_BLOCKED_WAIT_S = 0.005  # back-off when requests wait but nothing could be scheduled


class _Stream:
    """Delivery of one request's outputs from the worker thread to its event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, box: Mailbox[_Item]) -> None:
        self.loop = loop
        self.box = box

    def put(self, item: _Item) -> bool:
        try:
            self.loop.call_soon_threadsafe(self.box.put, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            return False
        return True


class TorchEngine(WorkerThread, WeightControl):
    """The embedded torch engine (implements Engine, PinnableEngine, EvictionHintEngine,
    KVTransferEngine; RL pause / weight update / resume from `WeightControl`)."""

    def __init__(self, core: EngineCore) -> None:
        self.core = core
        self._init_worker(f"legato-torch-{id(self):x}", "torch engine", core.config.command_timeout_s)
        self._commands: list[Callable[[], None]] = []
        self._streams: dict[str, _Stream] = {}
        self._ids = itertools.count()
        self._init_weight_control()

    # --- Engine protocol: properties -----------------------------------------------------

    @property
    def model_name(self) -> str:
        return self.core.model_name

    @property
    def capabilities(self) -> frozenset[Capability]:
        return frozenset(
            {
                Capability.LOGPROBS,
                Capability.TOP_LOGPROBS,
                Capability.PARALLEL_SAMPLING,
                Capability.PRIORITY,
                Capability.PREFIX_QUERY,
                Capability.PREFIX_SNAPSHOT,
                Capability.PREFILL_COSTS,
                Capability.PIN,
                Capability.EVICTION_HINTS,
                Capability.KV_EXPORT,
                Capability.KV_IMPORT,
                Capability.WEIGHT_UPDATE,
                Capability.SPECULATIVE,
                *((Capability.PREFETCH,) if self.core.tiers is not None else ()),
            }
        )

    @property
    def tokenizer(self) -> ByteTokenizer | HFTokenizer:
        return self.core.tokenizer

    @property
    def config(self) -> EngineConfig:
        return self.core.config

    # --- lifecycle (start, close, `async with`: `WorkerThread`) ---------------------------

    async def _after_close(self) -> None:
        tiers = self.core.tiers
        if tiers is not None:  # finish queued tier writes (bounded), then stop the writer
            with anyio.fail_after(self.config.command_timeout_s):
                await anyio.to_thread.run_sync(tiers.close, self.config.command_timeout_s / 2)

    # --- worker ---------------------------------------------------------------------------

    def _submit(self, fn: Callable[[], None]) -> None:
        with self._cv:
            self._commands.append(fn)
            self._cv.notify()

    def _loop(self) -> None:
        core = self.core
        wait_s = 0.0
        while True:
            with self._cv:
                idle = self._frozen() or not core.has_unfinished()
                if not self._commands and not self._stopping:
                    timeout = _IDLE_WAIT_S if idle else wait_s
                    if timeout > 0:
                        self._cv.wait(timeout)
                commands, self._commands = self._commands, []
                stopping = self._stopping
            for cmd in commands:
                try:
                    cmd()
                except Exception:  # a command must never take the worker down
                    log.exception("torch engine command failed")
            if stopping:
                self._shutdown()
                return
            wait_s = 0.0
            if self._frozen() or not core.has_unfinished():
                continue
            try:
                outputs = core.step()
            except Exception as exc:  # a bug or OOM: fail everything in flight, keep serving
                log.exception("torch engine step failed")
                self._fail_all(EngineError(f"torch engine step failed: {exc!r}"))
                continue
            for out in outputs:
                self._deliver(out)
            if core.last_step_tokens == 0:
                wait_s = _BLOCKED_WAIT_S  # e.g. blocks held by pins: wait for a TTL or unpin

    def _deliver(self, out: RequestOutput) -> None:
        out = dataclasses.replace(out, weight_version=self.weight_version)  # the step's weights
        stream = self._streams.get(out.request_id)
        if stream is None or not stream.put(out):
            if not out.finished:
                self.core.abort_request(out.request_id)
            self._streams.pop(out.request_id, None)
        elif out.finished:
            self._streams.pop(out.request_id, None)

    def _fail_all(self, error: EngineError) -> None:
        for rid in self.core.active_request_ids():
            self.core.abort_request(rid)
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream.put(error)

    def _shutdown(self) -> None:
        self._fail_all(EngineError("torch engine closed while the request was running"))
        with self._cv:
            leftover, self._commands = self._commands, []
        for cmd in leftover:
            cmd()

    async def _call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the worker thread between steps and await its result."""
        if self._closed:
            raise EngineError("torch engine is closed")
        self.start()
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if not fut.set_running_or_notify_cancel():
                return
            if self._stopping:
                fut.set_exception(EngineError("torch engine closed"))
                return
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

        self._submit(run)
        try:
            with anyio.fail_after(self.config.command_timeout_s):
                return await asyncio.wrap_future(fut)
        except TimeoutError as exc:
            fut.cancel()
            raise EngineError(f"torch engine did not answer within {self.config.command_timeout_s}s") from exc

    # --- Engine protocol: calls -----------------------------------------------------------

    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenChunk]:
        if self._closed:
            raise EngineError("torch engine is closed")
        self.core.validate(request)
        self.start()
        rid = request.request_id
        loop = asyncio.get_running_loop()
        box = Mailbox[_Item](stall_s=self.config.request_timeout_s)
        with self._cv:
            if rid in self._streams:
                raise EngineError(f"request id {rid!r} is already running")
            self._streams[rid] = _Stream(loop, box)

        preload = await self._fetch_from_tiers(request)

        def add() -> None:
            if self._hold_if_paused(add):
                return
            try:
                self.core.add_request(request, preload)
            except EngineError as exc:
                stream = self._streams.pop(rid, None)
                if stream is not None:
                    stream.put(exc)

        self._submit(add)
        outputs = receive_outputs(box, rid, self._abort_quietly)
        async with contextlib.aclosing(outputs):
            async for item in outputs:
                yield item.to_chunk()

    async def _fetch_from_tiers(self, request: GenerateRequest) -> list[KVBlock]:
        """Blocks of the prompt that the tiers hold beyond the device's cached prefix and that
        the cost model says to load rather than recompute. Runs in a worker thread (Redis I/O
        never blocks the event loop or the engine's step loop); slow or failed = recompute."""
        tiers = self.core.tiers
        if tiers is None or not self.config.enable_prefix_caching:
            return []
        # The last prompt token is always computed, so its block is never worth loading.
        usable = (len(request.prompt_token_ids) - 1) // self.config.block_size
        hashes = self.block_hashes(request.prompt_token_ids, request.cache_salt)[:usable]
        if not hashes:
            return []
        device = await self._call(lambda: len(self.core.blocks.lookup(hashes)))
        if device >= len(hashes):
            return []
        with anyio.move_on_after(self.config.tier_fetch_timeout_s):
            return await anyio.to_thread.run_sync(tiers.fetch, hashes, device, abandon_on_cancel=True)
        log.warning(
            "tier fetch for %s took over %ss; recomputing",
            request.request_id,
            self.config.tier_fetch_timeout_s,
        )
        return []

    def _abort_quietly(self, rid: str) -> None:
        """Abort without awaiting (used when a consumer stops iterating or is cancelled)."""

        def abort() -> None:
            self._streams.pop(rid, None)
            self.core.abort_request(rid)

        if not self._stopping:
            self._submit(abort)

    async def abort(self, request_id: str) -> None:
        def abort() -> None:
            out = self.core.abort_request(request_id)
            if out is not None:
                self._deliver(out)

        await self._call(abort)

    async def capacity(self) -> EngineCapacity:
        return await self._call(self.core.capacity)

    async def cached_prefix_tokens(self, token_ids: Sequence[int], cache_salt: str | None = None) -> int:
        ids = list(token_ids)
        return await self._call(lambda: self.core.cached_prefix_tokens(ids, cache_salt))

    async def stats(self) -> EngineStats:
        return await self._call(self.core.stats)

    # --- optional capabilities ------------------------------------------------------------

    async def pin(self, token_ids: Sequence[int], cache_salt: str | None, ttl_s: float) -> str:
        ids = list(token_ids)
        return await self._call(lambda: self.core.pin(ids, cache_salt, ttl_s))

    async def unpin(self, pin_id: str) -> None:
        await self._call(lambda: self.core.unpin(pin_id))

    async def set_next_use(self, token_ids: Sequence[int], cache_salt: str | None, next_use_s: float) -> None:
        ids = list(token_ids)
        await self._call(lambda: self.core.set_next_use(ids, cache_salt, next_use_s))

    async def prefetch(self, token_ids: Sequence[int], cache_salt: str | None, next_use_s: float) -> bool:
        ids = list(token_ids)
        return await self._call(lambda: self.core.prefetch(ids, cache_salt, next_use_s))

    async def export_blocks(self, block_hashes: Sequence[bytes]) -> list[KVBlock]:
        hashes = list(block_hashes)
        return await self._call(lambda: self.core.export_blocks(hashes))

    async def import_blocks(self, blocks: Sequence[KVBlock]) -> int:
        items = list(blocks)
        return await self._call(lambda: self.core.import_blocks(items))

    def block_hashes(self, token_ids: Sequence[int], cache_salt: str | None = None) -> list[bytes]:
        """Chained hashes of the full blocks of `token_ids` as this engine computes them (pure)."""
        return prefix_block_hashes(list(token_ids), self.config.block_size, self.core.extra_keys(cache_salt))

    def prefill_costs(self) -> tuple[float, float] | None:
        """`PrefillCostEngine`: the fit its tier loads are weighed against (`PrefillCostModel`)."""
        model = self.core.prefill_cost
        if not model.observations:
            return None
        return model.per_token_s, model.per_token_context_s

    def resident_prefix_tokens(self, token_ids: Sequence[int], cache_salt: str | None) -> int:
        """`PrefixSnapshotEngine`: the block pool's hash table read from the caller's thread."""
        table = self.core.blocks.cached
        n = 0
        for h in self.block_hashes(token_ids, cache_salt):
            if h not in table:
                break
            n += 1
        return n * self.config.block_size

    def new_request_id(self) -> str:
        return f"torch-{next(self._ids)}"


def build_core(
    checkpoint: Path | str | None = None,
    device: str = "cpu",
    *,
    model_config: ModelConfig | None = None,
    **config_overrides: Any,
) -> EngineCore:
    """The synchronous core, for benchmarks and calibration that drive `step()` themselves."""
    config = EngineConfig(device=device).with_overrides(**config_overrides)
    dtype = config.resolved_dtype
    if checkpoint is None:
        model = build_default_model(config.seed, model_config, device=device, dtype=dtype)
        name = "legato-default"
        tokenizer: ByteTokenizer | HFTokenizer = ByteTokenizer()
    else:
        if model_config is not None:
            raise EngineError(
                "model_config is only for the default model; a checkpoint has its own config.json"
            )
        model, tokenizer = load_checkpoint(checkpoint, device=device, dtype=dtype)
        name = Path(checkpoint).name
    if model.config.vocab_size < tokenizer.vocab_size:
        raise EngineError(
            f"tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
            f"{model.config.vocab_size}"
        )
    core = EngineCore(model, tokenizer, config, model_name=name)
    if config.host_tier_bytes or config.redis_url:
        core.attach_tiers(build_tiers(core))
    return core


def build_tiers(core: EngineCore, **tier_options: Any) -> TierManager:
    """The tier manager the core's config asks for (host pool size, Redis URL and chunking),
    measuring this engine's prefill cost for its load-vs-recompute decisions. `tier_options` are
    further `TierManager` fields (keep_unhinted, reuse_horizon_s, queue_size)."""
    cfg = core.config
    fmt = core.kv_format
    host = HostTier(cfg.host_tier_bytes) if cfg.host_tier_bytes else None
    redis_tier = None
    if cfg.redis_url:
        redis_cfg = RedisTierConfig(
            url=cfg.redis_url,
            chunk_blocks=cfg.redis_chunk_blocks,
            ttl_s=cfg.redis_ttl_s,
            op_timeout_s=cfg.redis_op_timeout_s,
            cluster=cfg.redis_cluster,
        )
        redis_tier = RedisTier(redis_cfg, fmt)
    return TierManager(fmt, cfg.block_size, host, redis_tier, prefill_s=core.prefill_cost, **tier_options)


def load_engine(
    checkpoint: Path | str | None = None,
    device: str = "cpu",
    *,
    model_config: ModelConfig | None = None,
    **config_overrides: Any,
) -> TorchEngine:
    """A torch engine: from a Hugging Face checkpoint directory, or (None) the small seeded default
    model with the byte-level tokenizer. `config_overrides` are `EngineConfig` fields
    (num_blocks, max_num_batched_tokens, seed, ...); `model_config` shrinks or grows the default
    model (tests use a tiny one)."""
    return TorchEngine(build_core(checkpoint, device, model_config=model_config, **config_overrides))
