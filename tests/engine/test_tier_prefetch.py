"""A policy's `Prefetch` reaches the torch engine's tiers through the runtime: the run's prefix
comes back from Redis into host RAM while its tool runs, ready for the next call."""

from __future__ import annotations

from collections.abc import Sequence

import anyio

from legato.engine_adapter.base import Capability, SamplingParams
from legato.scheduler.events import CallArrived, LLMCall, RunFinished, RunStarted, ToolStarted
from legato.scheduler.policy import BasePolicy, ClusterView, Decision, Dispatch, Prefetch
from legato.scheduler.runtime import PolicyScheduler
from tests.cache import conftest as cache_fixtures
from tests.engine.test_tier_engine import engine, prompt

cache_redis_proc = cache_fixtures.cache_redis_proc
redis_url = cache_fixtures.redis_url


class PrefetchOnTool(BasePolicy):
    """Dispatches at once; asks for the run's KV back as soon as its tool starts."""

    name = "prefetch-on-tool"

    def on_call(self, event: CallArrived, now: float, view: ClusterView) -> Sequence[Decision]:
        return (Dispatch(event.call.call_id, 0),)

    def on_tool_started(self, event: ToolStarted, now: float, view: ClusterView) -> Sequence[Decision]:
        return (Prefetch(event.run_id, 0),)


async def test_prefetch_pulls_the_runs_prefix_from_redis_into_host_ram(redis_url: str) -> None:
    tokens = prompt(3, 200)
    call = LLMCall("A#0", "A", "p", "step", "t", tokens, SamplingParams(max_tokens=4))
    async with (
        engine(redis_url=redis_url, host_tier_bytes=64 << 20, redis_op_timeout_s=1.0) as eng,
        PolicyScheduler([eng], PrefetchOnTool()) as sched,
    ):
        assert Capability.PREFETCH in eng.capabilities
        tiers = eng.core.tiers
        assert tiers is not None and tiers.host is not None and tiers.redis is not None
        sched.notify(RunStarted("A", "p", "t"))
        async for _ in sched.generate(call):
            pass
        assert tiers.flush(10.0)  # the prompt's whole chunks are written through to Redis
        salt = sched.cache_salt("t")
        hashes = eng.block_hashes(tokens, salt)
        chunk = tiers.redis.chunk_blocks
        in_redis = len(hashes) // chunk * chunk
        for h in hashes:  # host RAM starts without the prefix: only Redis has it
            tiers.host.discard(h)
        assert tiers.host.reach(hashes) == 0

        sched.notify(ToolStarted("A", "bash", 1.0))
        await sched.settle()
        with anyio.fail_after(10):
            while tiers.host.reach(hashes) < in_redis:
                assert tiers.flush(5.0)
                await anyio.sleep(0.01)
        sched.notify(RunFinished("A", "succeeded"))
        await sched.settle()
    assert in_redis > 0
    assert sched.stats["prefetches"] == 1 and sched.stats["prefetches_ignored"] == 0
    assert tiers.stats.prefetches == 1


async def test_engines_without_tiers_ignore_prefetch() -> None:
    call = LLMCall("A#0", "A", "p", "step", "t", prompt(4, 40), SamplingParams(max_tokens=2))
    async with engine() as eng, PolicyScheduler([eng], PrefetchOnTool()) as sched:
        assert Capability.PREFETCH not in eng.capabilities
        sched.notify(RunStarted("A", "p", "t"))
        async for _ in sched.generate(call):
            pass
        sched.notify(ToolStarted("A", "bash", 1.0))
        await sched.settle()
        sched.notify(RunFinished("A", "succeeded"))
        await sched.settle()
    assert sched.stats["prefetches"] == 0 and sched.stats["prefetches_ignored"] == 1
