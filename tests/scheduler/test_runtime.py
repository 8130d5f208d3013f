"""`PolicyScheduler`: the pure policies driven in real time against the real torch engine."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import AsyncIterator, Sequence

import anyio
import pytest
import torch

from legato.engine_adapter.base import SamplingParams, TokenChunk
from legato.engine_adapter.torch import TorchEngine, load_engine
from legato.scheduler.base import CallScheduler
from legato.scheduler.baselines import Continuum, FcfsLru, OracleEvict
from legato.scheduler.events import (
    CallArrived,
    Event,
    LLMCall,
    RunFinished,
    RunStarted,
    Tick,
    ToolFinished,
    ToolStarted,
)
from legato.scheduler.passthrough import PassthroughScheduler
from legato.scheduler.policy import (
    BasePolicy,
    ClusterView,
    Decision,
    Dispatch,
    Pause,
    Pin,
    Policy,
    PolicyTraits,
    Resume,
    SetPriority,
)
from legato.scheduler.runtime import PolicyScheduler, SchedulerError, UnsupportedPolicyError
from tests.tiny_model import TINY


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> None:
    torch.set_num_threads(1)


def engine(num_blocks: int = 64) -> TorchEngine:
    return load_engine(None, "cpu", model_config=TINY, num_blocks=num_blocks, max_num_batched_tokens=128)


def tokens(seed: int, n: int) -> tuple[int, ...]:
    rng = random.Random(seed)
    return tuple(rng.randrange(256) for _ in range(n))


def call(run: str, i: int, prompt: Sequence[int], max_tokens: int = 8) -> LLMCall:
    return LLMCall(
        call_id=f"{run}#{i}",
        run_id=run,
        program="p",
        node=f"step-{i}",
        tenant="t",
        prompt_token_ids=tuple(prompt),
        sampling=SamplingParams(max_tokens=max_tokens, ignore_eos=True),
    )


async def run_call(sched: CallScheduler, c: LLMCall) -> tuple[tuple[int, ...], int]:
    out: list[int] = []
    cached = 0
    stream: AsyncIterator[TokenChunk] = sched.generate(c)
    async for chunk in stream:
        out.extend(chunk.token_ids)
        cached = chunk.cached_tokens or cached
    return tuple(out), cached


async def agent(
    sched: CallScheduler, run: str, seed: int, steps: int, results: dict[str, tuple[int, ...]]
) -> None:
    """A small sequential agent: each step's prompt = previous prompt + output + tool output."""
    sched.notify(RunStarted(run, "p", "t"))
    prompt = tokens(seed, 40)
    for i in range(steps):
        out, _ = await run_call(sched, call(run, i, prompt))
        results[f"{run}#{i}"] = out
        sched.notify(ToolStarted(run, "bash", None))
        await anyio.sleep(0.01)
        sched.notify(ToolFinished(run, "bash", 0.01))
        prompt = prompt + out + tokens(seed * 100 + i, 12)
    sched.notify(RunFinished(run, "succeeded"))


async def run_agents(sched: CallScheduler) -> dict[str, tuple[int, ...]]:
    results: dict[str, tuple[int, ...]] = {}
    async with anyio.create_task_group() as tg:
        for k in range(3):
            tg.start_soon(agent, sched, f"run-{k}", k + 1, 3, results)
    return results


@pytest.mark.parametrize("policy", [FcfsLru, Continuum])
async def test_every_call_completes_with_passthrough_outputs(policy: type[BasePolicy]) -> None:
    async with engine() as e:
        expected = await run_agents(PassthroughScheduler(e))
    async with engine() as e, PolicyScheduler([e], policy()) as sched:
        got = await run_agents(sched)
        assert sched.stats["calls"] == sched.stats["dispatches"] == 9
        assert sched.running == [0] and sched.waiting == [0]
    assert len(got) == 9 and all(len(v) == 8 for v in got.values())
    assert got == expected


async def test_a_torch_engine_declares_its_measured_prefill_cost_to_the_policy() -> None:
    # The policy prices a recompute at what a prompt token costs on this engine (the fit its
    # tier loads use), not at busy time over all tokens, decode included (`EngineRates`).
    async with engine() as e, PolicyScheduler([e], Continuum()) as sched:
        assert sched.view.replica(0).prefill_s_per_token is None  # nothing timed yet
        await run_agents(sched)
        view = sched.view.replica(0)
        fit = e.core.prefill_cost
        assert fit.observations > 0
        assert view.prefill_s_per_token == fit.per_token_s > 0.0
        assert view.prefill_s_per_pair == fit.per_token_context_s
        cost = fit(0, 100)  # the engine's own price of a 100-token context ...
        pairs = 100 * 101 / 2  # ... as the policy's `EngineRates.recompute_s` counts it
        priced = 100 * view.prefill_s_per_token + pairs * view.prefill_s_per_pair
        assert priced == pytest.approx(cost, rel=0.02)


async def pinned_hit(policy: Policy) -> int:
    """A's KV survives a tool step only if pinned: B then C (distinct prompts) fill the cache
    while A's tool runs, so LRU evicts A's blocks (the oldest) unless they are pinned."""
    async with engine(num_blocks=12) as e, PolicyScheduler([e], policy) as sched:
        sched.notify(RunStarted("A", "p", "t"))
        prompt = tokens(1, 64)  # 4 full blocks
        out, _ = await run_call(sched, call("A", 0, prompt))
        sched.notify(ToolStarted("A", "bash", None))
        await sched.settle()  # the pin (if any) has reached the engine
        for run, seed in (("B", 2), ("C", 3)):  # 7 full blocks each: together more than is free
            sched.notify(RunStarted(run, "p", "t"))
            await run_call(sched, call(run, 0, tokens(seed, 120)))
            sched.notify(RunFinished(run, "succeeded"))
        sched.notify(ToolFinished("A", "bash", 0.05))
        _, cached = await run_call(sched, call("A", 1, prompt + out + tokens(9, 16)))
        sched.notify(RunFinished("A", "succeeded"))
        await sched.settle()
        stats = await e.stats()
        assert stats.pins == 0  # the pin went once A's next call was admitted / A finished
        return cached


class _PinAtTool(FcfsLru):
    """Pins a run's KV for 30 s at each tool step (Continuum, with its TTL rule left out: on
    this tiny engine a 64-token context is too cheap to reload for Continuum to pin it)."""

    name = "pin-at-tool"

    def on_tool_started(self, event: ToolStarted, now: float, view: ClusterView) -> Sequence[Decision]:
        return (Pin(event.run_id, 30.0),)


async def test_pin_keeps_prefix_through_tool_where_lru_loses_it() -> None:
    assert await pinned_hit(_PinAtTool()) == 64
    assert await pinned_hit(FcfsLru()) == 0


async def test_oracle_evict_is_rejected() -> None:
    with pytest.raises(UnsupportedPolicyError, match="future knowledge"):
        PolicyScheduler([engine()], OracleEvict())


class _PauseFirst(BasePolicy):
    """Pauses run X at its call, dispatches it anyway (held), resumes on the first tick."""

    name = "pause-first"
    traits = PolicyTraits(tick_s=0.05)

    def __init__(self) -> None:
        self.paused = False
        self.resumed_at: float | None = None

    def on_event(self, event: Event, now: float, view: ClusterView) -> Sequence[Decision]:
        if isinstance(event, CallArrived):
            c = event.call
            if not self.paused:
                self.paused = True
                return (Pause(c.run_id), Dispatch(c.call_id, 0, 5), SetPriority(c.run_id, 1))
            return (Dispatch(c.call_id, 0),)
        if isinstance(event, Tick) and self.paused and self.resumed_at is None:
            self.resumed_at = now
            return (Resume("X"),)
        return ()


async def test_pause_holds_calls_until_resume_and_ticks_run() -> None:
    policy = _PauseFirst()
    async with engine() as e, PolicyScheduler([e], policy) as sched:
        sched.notify(RunStarted("X", "p", "t"))
        out, _ = await run_call(sched, call("X", 0, tokens(5, 20)))
        assert len(out) == 8 and policy.resumed_at is not None
        assert sched.stats["pauses"] == 1 and sched.stats["resumes"] == 1


class _Never(BasePolicy):
    name = "never"

    def on_call(self, event: CallArrived, now: float, view: ClusterView) -> Sequence[Decision]:
        return ()


async def test_undispatched_call_times_out_and_scheduler_needs_entering() -> None:
    e = engine()
    sched = PolicyScheduler([e], _Never(), dispatch_timeout_s=0.1)
    with pytest.raises(SchedulerError, match="async with"):
        await run_call(sched, call("R", 0, tokens(1, 8)))
    async with e, sched:
        with pytest.raises(SchedulerError, match="did not dispatch"):
            await run_call(sched, call("R", 0, tokens(1, 8)))
        assert sched.pending == {}


async def test_view_reports_capacity_and_cached_prefix() -> None:
    async with engine(num_blocks=32) as e, PolicyScheduler([e], FcfsLru()) as sched:
        prompt = tokens(7, 48)
        await run_call(sched, call("V", 0, prompt))
        await sched.settle()
        r = sched.view.replica(0)
        assert (r.total_blocks, r.block_size, r.running, r.waiting) == (32, 16, 0, 0)
        assert sched.view.resident_tokens(0, "V") == 48  # 48 prompt + 8 output: 3 full blocks
        assert sched.busy_s[0] > 0


async def test_the_policy_learns_how_much_of_a_prompt_repeats_the_runs_context() -> None:
    seen: dict[str, int | None] = {}

    class Recording(FcfsLru):
        def on_call(self, event, now, view):  # type: ignore[no-untyped-def]
            seen[event.call.call_id] = event.call.reused_context_tokens
            return super().on_call(event, now, view)

    async with engine() as e, PolicyScheduler([e], Recording()) as sched:
        first = tokens(5, 40)
        out, _ = await run_call(sched, call("R", 0, first))
        # the next turn of a conversation: the whole context, then more
        await run_call(sched, call("R", 1, first + out + tokens(6, 8)))
        # a node that opens with its own instructions, then the same material: longer, reused 0
        other = tokens(9, 4) + first + out + tokens(6, 8)
        await run_call(sched, call("R", 2, other))
        # what the caller already knows is kept
        known = dataclasses.replace(call("R", 3, other + tokens(7, 4)), reused_context_tokens=3)
        await run_call(sched, known)
    assert seen == {"R#0": 0, "R#1": 48, "R#2": 0, "R#3": 3}


async def test_consumer_closing_early_aborts_the_request_and_finishes_the_call() -> None:
    finished: list[str] = []

    class Recording(FcfsLru):
        def on_call_finished(self, event, now, view):  # type: ignore[no-untyped-def]
            finished.append(event.finish_reason)
            return ()

    async with engine() as e, PolicyScheduler([e], Recording()) as sched:
        stream = sched.generate(call("E", 0, tokens(3, 24), max_tokens=200))
        first = await stream.__anext__()
        assert first.token_ids
        await stream.aclose()  # type: ignore[attr-defined]
        assert finished == ["abort"]
        assert sched.running == [0] and sched.waiting == [0]
        for _ in range(500):  # the abort reaches the engine worker between two steps
            if not (await e.stats()).running:
                break
            await anyio.sleep(0.01)
        assert (await e.stats()).running == 0


async def engine_holds(e: TorchEngine, running: int, waiting: int) -> None:
    """Wait until the engine runs and queues that many requests (no sleeps that a loaded
    machine could outrun)."""
    with anyio.fail_after(30):
        while True:
            stats = await e.stats()
            if (stats.running, stats.waiting) == (running, waiting):
                return
            await anyio.sleep(0.005)


class _Rerank(BasePolicy):
    """Dispatches every call at priority 5; `ToolStarted` of run "trigger" lifts run "fast"."""

    name = "rerank"

    def on_call(self, event: CallArrived, now: float, view: ClusterView) -> Sequence[Decision]:
        return (Dispatch(event.call.call_id, 0, 0 if event.call.run_id == "long" else 5),)

    def on_tool_started(self, event: ToolStarted, now: float, view: ClusterView) -> Sequence[Decision]:
        return (SetPriority("fast", 0),) if event.run_id == "trigger" else ()


async def test_set_priority_reranks_a_call_waiting_in_the_engine() -> None:
    order: list[str] = []
    e = load_engine(None, "cpu", model_config=TINY, num_blocks=64, max_num_batched_tokens=128, max_num_seqs=1)
    async with e, PolicyScheduler([e], _Rerank()) as sched:

        async def go(run: str, seed: int, n: int) -> None:
            await run_call(sched, call(run, 0, tokens(seed, 16), max_tokens=n))
            order.append(run)

        async with anyio.create_task_group() as tg:
            tg.start_soon(go, "long", 1, 300)  # occupies the only running slot
            await engine_holds(e, 1, 0)
            tg.start_soon(go, "slow", 2, 32)  # queued first, priority 5
            await engine_holds(e, 1, 1)
            tg.start_soon(go, "fast", 3, 32)  # queued second, priority 5 ...
            await engine_holds(e, 1, 2)
            sched.notify(ToolStarted("trigger", "bash", None))  # ... lifted to 0 while queued
        # The engine runs one request at a time, so "fast" ends 32 steps before "slow"; when each
        # task records its end is up to the event loop, which a busy machine can delay a few steps.
        assert sorted(order) == ["fast", "long", "slow"]
        assert order.index("fast") < order.index("slow")
        assert sched.stats["requeued"] == 1


class _PauseOnTool(BasePolicy):
    """FCFS at priority 0; `ToolStarted` of run "pause" / "resume" pauses / resumes run "X"."""

    name = "pause-on-tool"

    def on_call(self, event: CallArrived, now: float, view: ClusterView) -> Sequence[Decision]:
        return (Dispatch(event.call.call_id, 0),)

    def on_tool_started(self, event: ToolStarted, now: float, view: ClusterView) -> Sequence[Decision]:
        if event.run_id == "pause":
            return (Pause("X"),)
        if event.run_id == "resume":
            return (Resume("X"),)
        return ()


async def test_pause_takes_back_a_call_waiting_in_the_engine() -> None:
    order: list[str] = []
    e = load_engine(None, "cpu", model_config=TINY, num_blocks=64, max_num_batched_tokens=128, max_num_seqs=1)
    async with e, PolicyScheduler([e], _PauseOnTool()) as sched:
        sched.notify(RunStarted("X", "p", "t"))

        async def go(run: str, seed: int, n: int) -> None:
            out, _ = await run_call(sched, call(run, 0, tokens(seed, 16), max_tokens=n))
            assert len(out) == n
            order.append(run)

        async with anyio.create_task_group() as tg:
            tg.start_soon(go, "long", 1, 300)  # occupies the only running slot
            await engine_holds(e, 1, 0)
            tg.start_soon(go, "X", 2, 4)  # queued in the engine first ...
            await engine_holds(e, 1, 1)
            sched.notify(ToolStarted("pause", "bash", None))  # ... then taken back
            await go("Y", 3, 4)  # queued after X, runs before it
            # (whether the task of "long" has recorded its end yet is up to the event loop)
            assert "X" not in order
            sched.notify(ToolStarted("resume", "bash", None))
        assert sorted(order) == ["X", "Y", "long"] and order.index("Y") < order.index("X")
        assert sched.stats["requeued"] == 1 and sched.stats["pauses"] == 1
