"""Many runs in one process: 2,000 concurrent runs of a 10-step program finish with correct
outputs; cancelling half of them mid-flight leaves no tasks, subprocesses or temp dirs."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import TypedDict

import psutil

from legato.programs.builder import Program, llm, ref, slot, tool, when
from legato.programs.calls import RunStatus
from legato.programs.executor import Executor
from legato.scheduler.passthrough import PassthroughScheduler
from legato.tools.env import EnvironmentManager
from legato.tools.registry import ToolRegistry
from legato.tools.registry import tool as register_tool
from legato.tools.runtime import ToolRuntime
from legato.tools.subprocess_tool import SubprocessTool
from tests.doubles.engines import FakeEngine
from tests.programs.helpers import wait_until

N_RUNS = 2000


class S(TypedDict):
    tag: str
    n: int


def increment(prompt: str) -> str:
    """The engine's reply: the number on the prompt's value line, plus one."""
    return str(int(prompt.split("n=", 1)[1].split("\n", 1)[0]) + 1)


def ten_step_program(reg: ToolRegistry) -> Program:
    """8 LLM steps (each adds 1) and 2 tool steps (each doubles): n -> ((n+4)*2+4)*2."""
    p = Program(S, name="ten_steps")
    p.prefix("ten_sys", "You count.\n")
    names = []
    for i in range(10):
        name = f"s{i}"
        if i in (4, 9):
            p.add_node(name, tool("double", args={"n": ref("n")}, output="n"))
        else:
            p.add_node(
                name,
                llm(
                    prefix=["ten_sys"],
                    slots=[slot("tag", "tag="), slot("n", "n=")],
                    suffix=f"step{i}",
                    output="n",
                    output_schema={"type": "integer"},
                ),
            )
        if names:
            p.add_edge(names[-1], name)
        names.append(name)
    return p


def make_registry() -> ToolRegistry:
    reg = ToolRegistry()

    @register_tool(name="double", registry=reg)
    async def double(n: int) -> int:
        return n * 2

    return reg


async def test_2000_concurrent_runs_and_cancel_half(tmp_path: Path) -> None:
    reg = make_registry()
    program = ten_step_program(reg).compile(reg)
    # Odd runs park at step 6 (mid-flight, after a tool step) until cancelled.
    engine = FakeEngine(
        increment,
        first_token_latency_s=0.001,
        hold_if=lambda prompt: "hold" in prompt and "step6" in prompt,
    )
    baseline_tasks = len(asyncio.all_tasks())
    envs_root = tmp_path / "envs"
    started = time.perf_counter()
    async with (
        ToolRuntime(reg, envs=EnvironmentManager(envs_root)) as tools,
        Executor(PassthroughScheduler(engine), tools) as ex,
    ):
        handles = [ex.submit(program, {"tag": "hold" if i % 2 else "go", "n": i}) for i in range(N_RUNS)]
        await wait_until(lambda: engine.held == N_RUNS // 2, timeout_s=60)
        for h in handles[1::2]:
            h.cancel()
        results = [await h.wait(timeout_s=60) for h in handles]
    elapsed = time.perf_counter() - started
    for i, r in enumerate(results):
        if i % 2:
            assert r.status == RunStatus.CANCELLED and r.error == "cancelled"
            assert [s.node for s in r.steps] == [f"s{k}" for k in range(6)]  # finished steps journaled
        else:
            assert r.status == RunStatus.SUCCEEDED, r.error
            assert r.output["n"] == ((i + 4) * 2 + 4) * 2
            assert len(r.steps) == 10
    assert len(asyncio.all_tasks()) == baseline_tasks
    assert not ex.active_runs()
    assert list(envs_root.iterdir()) == []
    print(f"{N_RUNS} runs x 10 steps (half cancelled at step 6) in {elapsed:.2f}s")


async def test_cancel_runs_inside_subprocess_tools_leaves_nothing_behind(tmp_path: Path) -> None:
    reg = ToolRegistry()
    reg.register(SubprocessTool("wait", [sys.executable, "-c", "import time; time.sleep(60)"], timeout=120))
    reg.register(SubprocessTool("quick", [sys.executable, "-c", "print('done')"], timeout=30))

    class T(TypedDict):
        mode: str
        out: str

    p = Program(T, name="sub")
    p.add_node("pick", llm(slots=["mode"], output="mode"))
    p.add_node("wait", tool("wait", output="out"))
    p.add_node("quick", tool("quick", output="out"))
    p.add_conditional_edges(
        "pick", {"wait": when("mode", "eq", "slow")}, destinations=["wait", "quick"], default="quick"
    )
    program = p.compile(reg)
    engine = FakeEngine(lambda prompt: prompt.strip())
    envs_root = tmp_path / "envs"
    me = psutil.Process()
    # Children alive before the runs (a session-wide redis-server of other tests) are not ours.
    before = {c.pid for c in me.children(recursive=True)}

    def ours() -> list[psutil.Process]:
        return [c for c in me.children(recursive=True) if c.pid not in before]

    async with (
        ToolRuntime(reg, envs=EnvironmentManager(envs_root)) as tools,
        Executor(PassthroughScheduler(engine), tools) as ex,
    ):
        handles = [ex.submit(program, {"mode": "slow" if i % 2 else "fast"}) for i in range(16)]
        await wait_until(lambda: len(ours()) >= 8, poll_s=0.05)
        assert len(list(envs_root.iterdir())) >= 8
        for h in handles[1::2]:
            h.cancel()
        results = [await h.wait(timeout_s=30) for h in handles]
    assert [r.status for r in results] == [RunStatus.SUCCEEDED, RunStatus.CANCELLED] * 8
    assert all("done" in r.output["out"]["stdout"] for r in results[::2])
    assert ours() == []
    assert list(envs_root.iterdir()) == []
