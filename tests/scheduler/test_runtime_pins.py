"""`PolicyScheduler` applies cache decisions before the engine's next step can evict the blocks.

The race this guards against: the torch engine frees a finished call's blocks in the step that
produces its last token and, when a request is waiting, admits it in the very next step. A Pin
decided on `CallFinished` travels through the event loop and cannot win that race by itself;
the runtime's bridge pin (held from the call's admission) has to.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import anyio
import pytest
import torch

from legato.engine_adapter.base import SamplingParams
from legato.engine_adapter.torch import TorchEngine, load_engine
from legato.scheduler.baselines import FcfsLru
from legato.scheduler.events import CallArrived, CallFinished, LLMCall, RunFinished, RunStarted, ToolStarted
from legato.scheduler.policy import BasePolicy, ClusterView, Decision, Dispatch, NextUse, Pin
from legato.scheduler.runtime import PolicyScheduler
from tests.tiny_model import TINY

BLOCKS = 24
BS = 16


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> None:
    torch.set_num_threads(1)


def engine() -> TorchEngine:
    # one request at a time, whole prompts in one step: a waiting request is admitted, with all
    # its blocks, in the step right after a finish
    return load_engine(
        None, "cpu", model_config=TINY, num_blocks=BLOCKS, max_num_seqs=1, max_num_batched_tokens=512
    )


def tokens(seed: int, n: int) -> tuple[int, ...]:
    rng = random.Random(seed)
    return tuple(rng.randrange(256) for _ in range(n))


def call(run: str, prompt: Sequence[int], max_tokens: int) -> LLMCall:
    return LLMCall(
        call_id=f"{run}#0",
        run_id=run,
        program="p",
        node="step",
        tenant="t",
        prompt_token_ids=tuple(prompt),
        sampling=SamplingParams(max_tokens=max_tokens, ignore_eos=True),
    )


class PinA(BasePolicy):
    """Dispatches at once; hints B's KV as needed again in a minute; pins A when its call ends."""

    name = "pin-a"

    def on_call(self, event: CallArrived, now: float, view: ClusterView) -> Sequence[Decision]:
        return (Dispatch(event.call.call_id, 0),)

    def on_call_finished(self, event: CallFinished, now: float, view: ClusterView) -> Sequence[Decision]:
        if event.run_id == "B":
            return (NextUse("B", now + 60.0),)
        if event.run_id == "A":
            return (Pin("A", 30.0),)
        return ()


async def drain(sched: PolicyScheduler, c: LLMCall) -> None:
    async for _ in sched.generate(c):
        pass


async def drain_a(sched: PolicyScheduler, e: TorchEngine, c: LLMCall, admitted: anyio.Event) -> list[int]:
    """Consume A's call; on its first token (31 to go), read how many pins the engine holds."""
    pins: list[int] = []
    async for _ in sched.generate(c):
        if not pins:
            await sched.settle()
            pins.append((await e.stats()).pins)
            admitted.set()
    return pins


async def test_pin_decided_at_finish_beats_the_next_engine_step() -> None:
    """B (hinted: needed again soon) and A (pinned when its call ends) are cached; C, queued
    behind A, needs more blocks than are free the moment A finishes. The engine evicts unhinted
    blocks first, so without a pin in place at that moment C would take A's; with it, C takes
    B's, and A's whole prompt is still cached afterwards."""
    a_prompt, b_prompt = tokens(1, 6 * BS), tokens(2, 6 * BS)
    c_prompt = tokens(3, (BLOCKS - 7) * BS - 1)  # fits only if A's prompt blocks are not needed
    async with engine() as e, PolicyScheduler([e], PinA()) as sched:
        for run in ("A", "B", "C"):
            sched.notify(RunStarted(run, "p", "t"))
        await drain(sched, call("B", b_prompt, 1))
        await sched.settle()
        assert await e.cached_prefix_tokens(b_prompt) == 6 * BS
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                a_running = anyio.Event()
                pins_while_a_runs: list[int] = []

                async def run_a() -> None:
                    pins_while_a_runs.extend(await drain_a(sched, e, call("A", a_prompt, 32), a_running))

                tg.start_soon(run_a)
                await a_running.wait()  # A is running; C waits in the engine behind it
                tg.start_soon(drain, sched, call("C", c_prompt, 1))
        sched.notify(ToolStarted("A", "bash", None))
        await sched.settle()
        a_cached = await e.cached_prefix_tokens(a_prompt)
        b_cached = await e.cached_prefix_tokens(b_prompt)
        stats = dict(sched.stats)
        for run in ("A", "B", "C"):
            sched.notify(RunFinished(run, "succeeded"))
        await sched.settle()
        assert (await e.stats()).pins == 0  # every pin, bridge or not, is gone with its run
    # the pin was in the engine before A finished: no race left for the engine to win
    assert pins_while_a_runs == [1]
    assert a_cached == 6 * BS  # the pinned prefix survived
    assert b_cached < 6 * BS  # the pressure was real: it evicted the unpinned (hinted) one
    assert stats["bridge_pins"] >= 1 and stats["pins"] == 1
    assert stats["control_errors"] == stats["bad_decisions"] == 0


async def test_policy_that_never_pins_gets_no_bridge_pins() -> None:
    """fcfs-lru's engine behaviour stays stock: the runtime adds no pins of its own."""
    async with engine() as e, PolicyScheduler([e], FcfsLru()) as sched:
        sched.notify(RunStarted("A", "p", "t"))
        await drain(sched, call("A", tokens(1, 40), 4))
        await sched.settle()
        pins_in_engine = (await e.stats()).pins
        sched.notify(RunFinished("A", "succeeded"))
        assert sched.stats["bridge_pins"] == sched.stats["pins"] == 0
    assert pins_in_engine == 0
