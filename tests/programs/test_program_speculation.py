"""Program-level speculation on the real torch engine (tiny seeded model) with real subprocess
tools: wrong guesses never change a run's result, a speculative prefill really warms the prefix
cache, and the `react_coder` bench runs both modes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TypedDict

import anyio

from legato.bench.program_bench import ProgramBenchConfig, run_program_bench_async
from legato.engine_adapter.torch import load_engine
from legato.programs.agent import AgentContext, agent
from legato.programs.builder import Program, llm, ref, slot
from legato.programs.builder import tool as tool_node
from legato.programs.calls import RunStatus
from legato.programs.executor import Executor
from legato.programs.prompt import PrefixPart, PromptRenderer
from legato.programs.speculation import ProgramSpecConfig
from legato.scheduler.passthrough import PassthroughScheduler
from legato.tools import SubprocessTool, ToolRegistry
from legato.tools.registry import tool
from legato.tools.runtime import ToolRuntime
from tests.tiny_model import TINY, tiny_model_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
WRITE = [sys.executable, "-c", "import sys; open(sys.argv[1], 'w').write(sys.stdin.read())", "{path}"]


def file_tools() -> ToolRegistry:
    registry = ToolRegistry()
    registry.register(SubprocessTool("read", ["cat", "--", "{path}"], pure=True, timeout=10.0))
    registry.register(SubprocessTool("list", ["ls", "-1"], pure=True, timeout=10.0))
    registry.register(SubprocessTool("write", WRITE, stdin_arg="content", timeout=10.0))
    return registry


@agent(name="spec-probe")
async def probe(ctx: AgentContext, tag: str) -> list[str]:
    """Every guess it invites is wrong or stale at some point: the early parser names a file the
    agent never reads, and a read streamed before a write is made stale by that write."""
    await ctx.tool("write", path="a.txt", content="A")
    await ctx.tool("write", path="b.txt", content="B")
    await ctx.llm(f"{tag} look", max_tokens=4, tool_call=lambda text: ("read", {"path": "b.txt"}))
    seen = [str((await ctx.tool("list"))["stdout"])]  # predicted from the first run on
    for i in range(3):
        await ctx.llm(f"{tag} turn {i}", max_tokens=4, tool_call=lambda text: ("read", {"path": "b.txt"}))
        seen.append(str((await ctx.tool("read", path="a.txt"))["stdout"]))
        await ctx.llm(f"{tag} edit {i}", max_tokens=4, tool_call=lambda text: ("read", {"path": "a.txt"}))
        await ctx.tool("write", path="a.txt", content=f"A{i}")  # the early read of a.txt is now stale
        seen.append(str((await ctx.tool("read", path="a.txt"))["stdout"]))
    return seen


EXPECTED = ["a.txt\nb.txt\n", "A", "A0", "A0", "A1", "A1", "A2"]


async def test_mispredicted_and_stale_speculative_tools_never_change_a_result() -> None:
    async with load_engine(None, "cpu", model_config=TINY, num_blocks=256, seed=1) as engine:
        sched = PassthroughScheduler(engine)
        async with ToolRuntime(file_tools()) as tools:
            async with Executor(sched, tools) as plain:
                baseline = await plain.run(probe, {"tag": "plain"})
            async with Executor(sched, tools, speculation=ProgramSpecConfig()) as ex:
                runs = [await ex.run(probe, {"tag": f"spec {i}"}) for i in range(3)]
                counters = ex.speculation_counters
    assert baseline.status == RunStatus.SUCCEEDED, baseline.error
    assert baseline.output == EXPECTED
    assert [r.output for r in runs] == [EXPECTED] * 3, [r.error for r in runs]
    assert counters.tools_discarded >= 6  # b.txt never read, the streamed a.txt read went stale
    assert counters.tools_used >= 2  # `list` predicted from the earlier runs' history


async def test_a_speculative_prefill_warms_the_next_prompt_while_the_tool_runs() -> None:
    system = PrefixPart("spec_prefill_sys", "You are a careful agent. " * 6)
    text = "Observation of a long tool call that the next prompt starts with. " * 3
    async with load_engine(None, "cpu", model_config=TINY, num_blocks=256, seed=2) as engine:
        tokens = PromptRenderer(engine.tokenizer).render([system], [text]).token_ids
        block = (await engine.capacity()).block_size
        registry = ToolRegistry()

        @tool("wait_warm", pure=True, registry=registry)
        async def wait_warm() -> int:
            """Poll the engine's prefix cache until the warmed prompt is in it (or 10 s)."""
            for _ in range(1000):
                cached = await engine.cached_prefix_tokens(tokens)
                if cached >= len(tokens) // block * block:
                    break
                await anyio.sleep(0.01)
            return cached

        @agent(name="warm-probe")
        async def warm_probe(ctx: AgentContext) -> tuple[bool, int]:
            warmed = ctx.warm(system, text)
            return warmed, int(await ctx.tool("wait_warm"))

        spec = ProgramSpecConfig()
        async with (
            ToolRuntime(registry) as tools,
            Executor(PassthroughScheduler(engine), tools, speculation=spec) as ex,
        ):
            result = await ex.run(warm_probe)
            prefills = ex.speculation_counters.prefills
    assert result.status == RunStatus.SUCCEEDED, result.error
    assert result.output == (True, len(tokens) // block * block)
    assert prefills == 1


class G(TypedDict):
    question: str
    found: int
    answer: str


async def test_a_tool_node_warms_its_successors_prompt_up_to_the_slot_that_waits_on_it() -> None:
    system = "You answer from the search results only. " * 5
    question = "Which block size does the engine use? " * 2
    async with load_engine(None, "cpu", model_config=TINY, num_blocks=256, seed=4) as engine:
        known = PromptRenderer(engine.tokenizer).render(
            [PrefixPart("graph_sys", system)], f"Q: {question}\nResults: "
        )
        block = (await engine.capacity()).block_size
        target = len(known.token_ids) // block * block
        registry = ToolRegistry()

        @tool("search", pure=True, registry=registry)
        async def search(q: str) -> int:
            """Return once the next node's known prompt is cached: how much of it is."""
            for _ in range(1000):
                cached = await engine.cached_prefix_tokens(known.token_ids)
                if cached >= target:
                    break
                await anyio.sleep(0.01)
            return cached

        p = Program(G, name="spec_graph")
        p.prefix("graph_sys", system)
        p.add_node("search", tool_node("search", args={"q": ref("question")}, output="found"))
        slots = [slot("question", "Q: "), slot("found", "Results: ")]
        p.add_node("answer", llm(prefix=["graph_sys"], slots=slots, max_tokens=4, output="answer"))
        p.add_edge("search", "answer")
        spec = ProgramSpecConfig()
        async with (
            ToolRuntime(registry) as tools,
            Executor(PassthroughScheduler(engine), tools, speculation=spec) as ex,
        ):
            result = await ex.run(p.compile(), {"question": question})
    assert result.status == RunStatus.SUCCEEDED, result.error
    assert target > 0 and result.output["found"] == target


async def test_react_coder_bench_runs_with_and_without_program_speculation() -> None:
    cfg = ProgramBenchConfig(EXAMPLES / "react_coder.py", programs=2, concurrency=2, rounds=1, vary="task")
    model = tiny_model_config(4096)  # the transcript outgrows TINY's 1024 positions
    results: dict[str, Any] = await run_program_bench_async(cfg, model_config=model, num_blocks=1024)
    off, on = results["off"], results["on"]
    assert off.failed == on.failed == 0, (off.errors, on.errors)
    assert len(off.tcts_s) == len(on.tcts_s) == 2
    assert off.counters["prefills"] == 0 and on.counters["prefills"] > 0
    assert on.counters["tools_used"] > 0  # the pure reads and listings started early
