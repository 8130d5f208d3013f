"""Dynamic agents: call structure recorded per run, forks in parallel, history learned online and
turned into scheduler hints, tool failures surfaced as ToolCallError."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from legato.programs.agent import AgentContext, AgentProgram, ToolCallError, agent
from legato.programs.calls import RunStatus
from legato.programs.executor import Executor
from legato.programs.prompt import PrefixPart
from legato.tools.registry import ToolRegistry
from legato.tools.registry import tool as register_tool
from legato.tools.runtime import ToolRuntime
from tests.doubles.engines import FakeEngine
from tests.programs.helpers import RecordingScheduler

SYSTEM = PrefixPart("coder_system", "You are a coding agent. Tools: run_tests, search.\n")


def tools() -> ToolRegistry:
    reg = ToolRegistry()

    @register_tool(name="run_tests", registry=reg)
    async def run_tests(patch: str) -> dict[str, Any]:
        await anyio.sleep(0.02)
        return {"passed": len(patch) % 2 == 0}

    @register_tool(name="explode", registry=reg)
    async def explode() -> str:
        raise ValueError("kaboom")

    return reg


@agent(name="coder")
async def coder(ctx: AgentContext, task: str, turns: int = 3) -> list[Any]:
    results = []
    for turn in range(turns):
        patch = await ctx.llm(SYSTEM, f"task: {task} turn {turn}", label="propose")
        results.append(await ctx.tool("run_tests", patch=patch))
    return results


async def test_call_structure_is_recorded_and_history_predicts_the_next_tool() -> None:
    reg = tools()
    sched = RecordingScheduler(FakeEngine())
    async with ToolRuntime(reg) as rt, Executor(sched, rt) as ex:
        first = await ex.run(coder, {"task": "fix bug"})
        assert first.status == RunStatus.SUCCEEDED and len(first.output) == 3
        trace = first.trace
        assert trace is not None and trace.status == "succeeded"
        assert [(e.kind, e.site, e.path) for e in trace.events] == [
            ("llm", "propose", "0"), ("tool", "tool:run_tests", "1"),
            ("llm", "propose", "2"), ("tool", "tool:run_tests", "3"),
            ("llm", "propose", "4"), ("tool", "tool:run_tests", "5"),
        ]  # fmt: skip
        llm_event = trace.events[0]
        prefix_len = len(sched.tokenizer.encode(SYSTEM.text))
        assert llm_event.shared_prefix_tokens == prefix_len and llm_event.prefix_parts == ("coder_system",)
        assert llm_event.prompt_tokens > prefix_len and llm_event.output_tokens > 0
        assert all(e.finished_s >= e.started_s for e in trace.events)
        assert sched.calls[0].hints.next_tool is None  # nothing learned yet
        assert sched.calls[0].shared_prefix_tokens == prefix_len and sched.calls[0].program == "coder"

        await ex.run(coder, {"task": "fix another bug"})
    prediction = coder.history.predict_next("propose")
    assert prediction is not None and prediction.kind == "tool" and prediction.tool == "run_tests"
    assert prediction.probability == 1.0 and prediction.expected_latency_s is not None
    assert sched.calls[-1].hints.next_tool == "run_tests"  # learned online from the first run
    assert sched.calls[-1].hints.expected_tool_latency_s is not None
    assert coder.history.transitions()[("propose", "tool:run_tests")] == 6
    assert len(coder.history) == 2


async def test_fork_branches_run_in_parallel_with_their_own_paths() -> None:
    @agent
    async def tree(ctx: AgentContext, width: int) -> list[str]:
        async def think(c: AgentContext, i: int) -> str:
            return await c.llm(SYSTEM, f"idea {i}", label="think")

        async with ctx.fork() as f:
            branches = [f.spawn(think, i) for i in range(width)]
        best = await ctx.llm(SYSTEM, *[b.result for b in branches], label="judge")
        return [b.result for b in branches] + [best]

    engine = FakeEngine(first_token_latency_s=0.1)
    async with Executor(RecordingScheduler(engine)) as ex:
        t0 = anyio.current_time()
        result = await ex.run(tree, {"width": 8})
        elapsed = anyio.current_time() - t0
    assert result.status == RunStatus.SUCCEEDED and len(result.output) == 9
    assert engine.peak_active == 8 and elapsed < 0.5
    assert result.trace is not None
    paths = sorted(e.path for e in result.trace.events)
    assert paths == ["0", *[f"0.b{i}.0" for i in range(8)], "1"]
    fork = next(e for e in result.trace.events if e.kind == "fork")
    assert fork.branches == 8


async def test_tool_failure_is_catchable_and_uncaught_fails_the_run() -> None:
    reg = tools()

    @agent
    async def careful(ctx: AgentContext) -> str:
        try:
            await ctx.tool("explode")
        except ToolCallError as exc:
            return f"recovered: {exc.kind}: {exc}"
        return "no error?"

    @agent
    async def careless(ctx: AgentContext) -> str:
        return str(await ctx.tool("explode"))

    async with ToolRuntime(reg) as rt, Executor(RecordingScheduler(FakeEngine()), rt) as ex:
        ok = await ex.run(careful, {})
        bad = await ex.run(careless, {})
    assert ok.status == RunStatus.SUCCEEDED and ok.output.startswith("recovered: exception:")
    assert "kaboom" in ok.output
    assert (
        bad.status == RunStatus.FAILED
        and "kaboom" in (bad.error or "")
        and "ToolCallError" in (bad.error or "")
    )
    assert bad.trace is not None and bad.trace.status == "failed" and not bad.trace.events[0].ok


async def test_agent_inputs_are_checked_and_decorator_rejects_sync_functions() -> None:
    async with Executor(RecordingScheduler(FakeEngine())) as ex:
        with pytest.raises(TypeError, match="inputs for agent 'coder'"):
            await ex.run(coder, {"tsk": "typo"})
    with pytest.raises(TypeError, match="async def"):
        AgentProgram(lambda ctx: None)  # type: ignore[arg-type,return-value]
