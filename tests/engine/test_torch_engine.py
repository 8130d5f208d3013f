"""The async TorchEngine: streaming, abort, cancellation, lifecycle, fail-fast errors, hooks."""

from __future__ import annotations

import math
import threading
from collections.abc import AsyncIterator

import anyio
import pytest

from legato.engine_adapter.base import (
    Capability,
    Engine,
    EngineError,
    EvictionHintEngine,
    GenerateRequest,
    KVTransferEngine,
    PinnableEngine,
    SamplingParams,
    collect,
)
from legato.engine_adapter.torch import TorchEngine, load_engine
from tests.tiny_model import TINY

PROMPT = tuple(range(30, 94))  # 64 tokens = 4 full blocks


@pytest.fixture
async def engine() -> AsyncIterator[TorchEngine]:
    eng = load_engine(model_config=TINY, num_blocks=32, max_num_batched_tokens=64)
    async with eng:
        yield eng
    assert not eng.running


def _greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, ignore_eos=True)


async def test_protocols_and_capabilities(engine: TorchEngine) -> None:
    for proto in (Engine, PinnableEngine, EvictionHintEngine, KVTransferEngine):
        assert isinstance(engine, proto)
    assert {Capability.PIN, Capability.KV_EXPORT, Capability.KV_IMPORT} <= engine.capabilities
    cap = await engine.capacity()
    assert cap.block_size == 16 and cap.total_blocks == 32 and cap.free_blocks == 32


async def test_streams_chunks_and_concurrent_requests_match_sync_core(engine: TorchEngine) -> None:
    chunks = [c async for c in engine.generate(GenerateRequest("s", PROMPT, _greedy(5)))]
    assert len(chunks) == 5 and chunks[-1].finished and chunks[-1].finish_reason == "length"
    assert all(c.prompt_tokens == 64 for c in chunks)
    results: dict[str, tuple[int, ...]] = {}

    async def one(i: int) -> None:
        r = await collect(engine, GenerateRequest(f"c{i}", tuple(range(i, i + 20 + i)), _greedy(8)))
        results[r.request_id] = r.token_ids

    async with anyio.create_task_group() as tg:
        for i in range(6):
            tg.start_soon(one, i)
    ref = load_engine(model_config=TINY, num_blocks=32).core
    for i in range(6):
        expected = ref.run_to_completion([GenerateRequest("x", tuple(range(i, i + 20 + i)), _greedy(8))])["x"]
        assert results[f"c{i}"] == tuple(t for o in expected for t in o.token_ids)


async def test_prefix_hit_reports_cached_tokens_and_same_output(engine: TorchEngine) -> None:
    first = await collect(engine, GenerateRequest("a", PROMPT, _greedy(6)))
    assert await engine.cached_prefix_tokens(PROMPT) == 64
    second = await collect(engine, GenerateRequest("b", PROMPT, _greedy(6)))
    assert first.cached_tokens == 0 and second.cached_tokens == 48  # the last block is recomputed
    assert first.token_ids == second.token_ids
    stats = await engine.stats()
    assert stats.prefix_hit_requests == 1 and stats.prefix_hit_tokens == 48


async def test_impossible_requests_fail_fast(engine: TorchEngine) -> None:
    with pytest.raises(EngineError, match="maximum length"):
        await collect(engine, GenerateRequest("long", (1,) * 1000, _greedy(100)))
    with pytest.raises(EngineError, match="KV blocks"):
        await collect(engine, GenerateRequest("big", (1,) * 500, _greedy(100)))
    with pytest.raises(EngineError, match="vocabulary"):
        await collect(engine, GenerateRequest("v", (1, 99999), _greedy(1)))
    with pytest.raises(EngineError, match="empty"):
        await collect(engine, GenerateRequest("e", (), _greedy(1)))


async def test_abort_finishes_the_stream(engine: TorchEngine) -> None:
    got = []
    async for chunk in engine.generate(GenerateRequest("ab", PROMPT, _greedy(400))):
        got.append(chunk)
        if len(got) == 2:
            await engine.abort("ab")
    assert got[-1].finished and got[-1].finish_reason == "abort"
    assert len(got) < 400
    assert (await engine.stats()).running == 0


async def test_cancelling_the_iteration_aborts_the_request(engine: TorchEngine) -> None:
    with anyio.move_on_after(0.2):
        async for _ in engine.generate(GenerateRequest("cx", PROMPT, _greedy(400))):
            pass
    for _ in range(100):
        stats = await engine.stats()
        if stats.running == 0 and stats.waiting == 0:
            break
        await anyio.sleep(0.01)
    assert stats.running == 0 and stats.used_blocks == 0
    # breaking out of the loop early aborts too
    async for _ in engine.generate(GenerateRequest("br", PROMPT, _greedy(300))):
        break
    await anyio.sleep(0.05)
    assert (await engine.stats()).running == 0


async def test_close_fails_pending_requests_and_joins_thread() -> None:
    eng = load_engine(model_config=TINY, num_blocks=64)
    errors: list[BaseException] = []

    async def consume() -> None:
        try:
            await collect(eng, GenerateRequest("p", PROMPT, _greedy(900)))
        except EngineError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        await anyio.sleep(0.1)
        await eng.close()
    assert not eng.running
    assert not [t for t in threading.enumerate() if t.name.startswith("legato-torch")]
    assert errors and "closed" in str(errors[0])
    with pytest.raises(EngineError, match="closed"):
        await collect(eng, GenerateRequest("q", PROMPT, _greedy(1)))


async def test_pin_keeps_prefix_through_pressure(engine: TorchEngine) -> None:
    await collect(engine, GenerateRequest("a", PROMPT, _greedy(1)))
    pin_id = await engine.pin(PROMPT, None, ttl_s=60.0)
    # fill the cache with other prompts: without the pin the prefix would be evicted
    for i in range(4):
        await collect(
            engine, GenerateRequest(f"f{i}", tuple((i * 50 + j) % 256 for j in range(200)), _greedy(1))
        )
    assert await engine.cached_prefix_tokens(PROMPT) == 64
    await engine.unpin(pin_id)
    for i in range(4, 8):
        await collect(
            engine, GenerateRequest(f"f{i}", tuple((i * 50 + j) % 256 for j in range(200)), _greedy(1))
        )
    assert await engine.cached_prefix_tokens(PROMPT) < 64


async def test_next_use_hint_protects_prefix(engine: TorchEngine) -> None:
    other = tuple(range(100, 164))
    await collect(engine, GenerateRequest("a", PROMPT, _greedy(1)))
    await collect(engine, GenerateRequest("b", other, _greedy(1)))  # newer: LRU would keep it
    await engine.set_next_use(PROMPT, None, 5.0)
    await engine.set_next_use(other, None, math.inf)
    await collect(engine, GenerateRequest("c", tuple((7 * j) % 256 for j in range(400)), _greedy(1)))
    assert await engine.cached_prefix_tokens(PROMPT) == 64
    assert await engine.cached_prefix_tokens(other) < 64


async def test_export_import_gives_prefix_hit_in_fresh_engine(engine: TorchEngine) -> None:
    first = await collect(engine, GenerateRequest("a", PROMPT, _greedy(6)))
    hashes = engine.block_hashes(PROMPT)
    blocks = await engine.export_blocks([*hashes, b"\x00" * 32])
    assert len(blocks) == 4 and blocks[0].shape and blocks[0].dtype == "float32"
    async with load_engine(model_config=TINY, num_blocks=32) as fresh:
        assert await fresh.cached_prefix_tokens(PROMPT) == 0
        assert await fresh.import_blocks(blocks) == 4
        assert await fresh.cached_prefix_tokens(PROMPT) == 64
        again = await collect(fresh, GenerateRequest("b", PROMPT, _greedy(6)))
    assert again.cached_tokens == 48 and again.token_ids == first.token_ids


async def test_import_rejects_foreign_layout(engine: TorchEngine) -> None:
    await collect(engine, GenerateRequest("a", PROMPT, _greedy(1)))
    blocks = await engine.export_blocks(engine.block_hashes(PROMPT))
    from dataclasses import replace

    with pytest.raises(EngineError, match="layout mismatch"):
        await engine.import_blocks([replace(blocks[0], dtype="bfloat16")])
