"""The real-time simulated engine: deterministic tokens, roofline-timed steps slept for real,
prefix-cache hits across turns, per-tenant salt isolation, bounded KV, aborts and bad input."""

from __future__ import annotations

import time

import anyio
import pytest

from legato.engine_adapter.base import Engine, EngineError, GenerateRequest, SamplingParams, collect
from legato.sim.realtime import RealtimeSimConfig, RealtimeSimEngine


def _req(rid: str, prompt: tuple[int, ...], max_tokens: int = 8, **kw: object) -> GenerateRequest:
    return GenerateRequest(rid, prompt, SamplingParams(max_tokens=max_tokens), **kw)  # type: ignore[arg-type]


PROMPT = tuple(b"You are a careful coding agent. " * 20)  # 640 tokens, 40 blocks


async def test_implements_the_engine_protocol_and_is_deterministic() -> None:
    async with RealtimeSimEngine() as a, RealtimeSimEngine() as b:
        assert isinstance(a, Engine)
        ra = await collect(a, _req("x", PROMPT, 20))
        rb = await collect(b, _req("y", PROMPT, 20))
    assert ra.token_ids == rb.token_ids and len(ra.token_ids) == 20
    assert ra.text == bytes(ra.token_ids).decode()
    assert ra.finish_reason == "length" and ra.prompt_tokens == len(PROMPT)


async def test_steps_take_the_cost_models_time() -> None:
    # time_scale 20 makes each decode step ~0.15 s on an H100 8B model: well above scheduling noise
    cfg = RealtimeSimConfig(time_scale=20.0)
    async with RealtimeSimEngine(cfg) as engine:
        cost = engine.cost
        expected = sum(cost.step_time(1, 641 + j, 641 + j) for j in range(4))
        expected += cost.step_time(640, 640 * 641 / 2, 640)
        start = time.monotonic()
        await collect(engine, _req("t", PROMPT, 5))
        elapsed = time.monotonic() - start
    assert elapsed >= expected * 20 * 0.95
    assert elapsed < expected * 20 * 3  # and it does not stall (generous: the CPU is shared)


async def test_next_turn_hits_the_previous_turns_blocks_for_its_tenant_only() -> None:
    async with RealtimeSimEngine() as engine:
        first = await collect(engine, _req("t1", PROMPT, 16, cache_salt="tenant-a"))
        turn2 = PROMPT + first.token_ids + tuple(b"tool output: ok\n")
        same = await collect(engine, _req("t2", turn2, 4, cache_salt="tenant-a"))
        other = await collect(engine, _req("t3", turn2, 4, cache_salt="tenant-b"))
        assert await engine.cached_prefix_tokens(turn2, "tenant-a") >= len(PROMPT) // 16 * 16
        stats = await engine.stats()
    assert first.cached_tokens == 0
    # every full block of turn 1 whose KV was computed (the last sampled token's never is, as in vLLM)
    assert same.cached_tokens == (len(PROMPT) + 16 - 1) // 16 * 16
    assert other.cached_tokens == 0
    assert stats.prefix_hit_tokens == same.cached_tokens and stats.prompt_tokens == 2 * len(turn2) + len(
        PROMPT
    )


async def test_kv_is_bounded_and_waiting_requests_run_when_blocks_free() -> None:
    # 8 blocks of 16: one request of 64 + 64 tokens fills it, so the batch runs one at a time
    cfg = RealtimeSimConfig(num_blocks=8, max_model_len=128)
    async with RealtimeSimEngine(cfg) as engine:
        results = []

        async def one(i: int) -> None:
            results.append(await collect(engine, _req(f"r{i}", tuple(range(i, i + 64)), 64)))

        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(one, i)
        stats = await engine.stats()
        assert (await engine.capacity()).total_blocks == 8
    assert [len(r.token_ids) for r in results] == [64, 64, 64]
    assert stats.used_blocks == 0 and stats.cached_blocks <= 8


async def test_bad_requests_are_refused_up_front() -> None:
    cfg = RealtimeSimConfig(num_blocks=4, max_model_len=100)
    async with RealtimeSimEngine(cfg) as engine:
        with pytest.raises(EngineError, match="context"):
            await collect(engine, _req("long", tuple(range(90)), 20))
        with pytest.raises(EngineError, match="KV blocks"):
            await collect(engine, _req("big", tuple(range(60)), 20))
        with pytest.raises(EngineError, match="vocabulary"):
            await collect(engine, _req("vocab", (1, 2, 100_000), 2))
        with pytest.raises(EngineError, match="empty"):
            await collect(engine, _req("empty", (), 2))


async def test_abandoned_stream_frees_its_blocks_and_stop_strings_cut() -> None:
    async with RealtimeSimEngine(RealtimeSimConfig(time_scale=5.0)) as engine:
        stream = engine.generate(_req("gone", PROMPT, 200))
        async for _ in stream:
            break
        await stream.aclose()  # type: ignore[attr-defined]
        for _ in range(500):  # the abort reaches the worker at its next step
            if not (await engine.stats()).running:
                break
            await anyio.sleep(0.02)
        assert (await engine.stats()).used_blocks == 0
        full = await collect(engine, _req("s0", PROMPT, 40))
        stop = full.text[10:12]
        cut = await collect(
            engine, GenerateRequest("s1", PROMPT, SamplingParams(max_tokens=40, stop=(stop,)))
        )
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.index(stop)]


async def _token_times(engine: RealtimeSimEngine, request: GenerateRequest) -> tuple[list[float], int]:
    """Seconds from submission to each token, and the cached tokens the first chunk reported."""
    start, times, cached = time.monotonic(), [], 0
    async for chunk in engine.generate(request):
        if chunk.token_ids:
            times.append(time.monotonic() - start)
            cached = cached or chunk.cached_tokens
    return times, cached


async def test_each_token_arrives_at_the_cost_models_step_end_and_a_repeat_hits_the_cache() -> None:
    scale = 10.0  # a decode step of an 8B model on an H100 becomes ~75 ms: above scheduling noise
    async with RealtimeSimEngine(RealtimeSimConfig(time_scale=scale)) as engine:
        cost, n = engine.cost, len(PROMPT)
        first, cached_first = await _token_times(engine, _req("a", PROMPT, 3))
        again, cached_again = await _token_times(engine, _req("b", PROMPT, 3))
        stats = await engine.stats()
    hit = (n - 1) // 16 * 16  # the last prompt token is always recomputed
    c = n - hit
    steps_first = [cost.step_time(n, n * (n + 1) / 2, n)]
    steps_again = [cost.step_time(c, c * hit + c * (c + 1) / 2, n)]
    for steps in (steps_first, steps_again):
        steps += [cost.step_time(1, n + j, n + j) for j in (1, 2)]
    for times, steps in ((first, steps_first), (again, steps_again)):
        ends = [sum(steps[: i + 1]) * scale for i in range(3)]
        for got, want in zip(times, ends, strict=True):
            assert want * 0.97 <= got < want + 0.25  # late only by scheduling (the CPU is shared)
    assert cached_first == 0 and cached_again == hit
    assert steps_again[0] < steps_first[0] / 2  # the hit skipped the prefill compute
    assert stats.prefix_hit_requests == 1 and stats.prefix_hit_tokens == hit


async def test_a_long_running_engine_stays_bounded_by_its_pool() -> None:
    """Distinct prompts forever must not grow the seg-id map, the radix tree or the eviction heap
    past a multiple of the pool (plus the paths of requests in flight), nor the preemption
    candidates past twice the seats (without KV pressure nothing pops them)."""
    cfg = RealtimeSimConfig(num_blocks=32, max_model_len=128, max_num_seqs=8, time_scale=0.0)
    concurrency, per_request = 4, 4  # 3 full prompt blocks + 1 output tail node per request
    bound = 2 * (cfg.num_blocks or 0) + 2 * concurrency * per_request + per_request
    async with RealtimeSimEngine(cfg) as engine:
        pool = engine.replica.pool
        peak = [0, 0, 0, 0]

        async def one(i: int) -> None:
            prompt = (i % 256, i // 256, *range(46))  # every block distinct
            result = await collect(engine, _req(f"r{i}", prompt, 8))
            assert len(result.token_ids) == 8
            sizes = (len(engine._seg_ids), pool.n_nodes, pool.heap_len, len(engine.replica.victims))
            peak[:] = [max(a, b) for a, b in zip(peak, sizes, strict=True)]

        for start in range(0, 600, concurrency):
            async with anyio.create_task_group() as tg:
                for i in range(start, start + concurrency):
                    tg.start_soon(one, i)
        again = (599 % 256, 599 // 256, *range(46))
        repeat = await collect(engine, _req("again", again, 8))
        engine.replica.check()
    assert peak[0] <= bound and peak[1] <= bound, (peak, bound)  # unpruned: 1,800 ids, 2,400 nodes
    assert peak[2] <= 2 * 32 + per_request
    assert peak[3] <= 2 * cfg.max_num_seqs + 1, peak  # unbounded: one entry per request, 600
    assert len(engine._seg_hash) == len(engine._seg_ids) <= pool.n_nodes
    assert repeat.cached_tokens == 32  # recent blocks survive pruning and still hit (the last
    # prompt token is always recomputed, so 2 of its 3 blocks)
