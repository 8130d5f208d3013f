"""Programs on the real embedded torch engine (a tiny seeded model): graph and agent runs go
through the scheduler to real token generation, concurrently."""

from __future__ import annotations

from typing import TypedDict

from legato.engine_adapter.torch import load_engine
from legato.programs.agent import AgentContext, agent
from legato.programs.builder import Program, fan_out, llm
from legato.programs.calls import RunStatus
from legato.programs.executor import Executor
from legato.programs.prompt import PrefixPart
from tests.programs.helpers import RecordingScheduler
from tests.tiny_model import TINY


class S(TypedDict):
    topics: list[str]
    drafts: list[str]
    summary: str


async def test_graph_and_agent_runs_on_the_torch_engine() -> None:
    p = Program(S, name="torch_mapreduce")
    p.prefix("torch_sys", "You are one of several workers sharing this long system prompt. " * 4)
    p.add_node(
        "map", fan_out("topics", llm(prefix=["torch_sys"], slots=["item"], max_tokens=6), output="drafts")
    )
    p.add_node("reduce", llm(prefix=["torch_sys"], slots=["drafts"], max_tokens=6, output="summary"))
    p.add_edge("map", "reduce")
    program = p.compile()

    system = PrefixPart("torch_agent_sys", "Think step by step. ")

    @agent
    async def thinker(ctx: AgentContext, q: str) -> str:
        ideas = await ctx.gather(
            *[lambda c, i=i: c.llm(system, f"{q} idea {i}", max_tokens=4) for i in range(3)]
        )
        return await ctx.llm(system, *ideas, max_tokens=4, label="judge")

    async with load_engine(None, "cpu", model_config=TINY, num_blocks=256, seed=3) as engine:
        sched = RecordingScheduler(engine)
        async with Executor(sched) as ex:
            handles = [ex.submit(program, {"topics": [f"topic {i}", f"other {i}"]}) for i in range(3)]
            handles.append(ex.submit(thinker, {"q": "why"}))
            results = [await h.wait(timeout_s=120) for h in handles]
    assert [r.status for r in results] == [RunStatus.SUCCEEDED] * 4, [r.error for r in results]
    assert all(len(r.output["drafts"]) == 2 and isinstance(r.output["summary"], str) for r in results[:3])
    assert results[3].trace is not None and len(results[3].trace.events) == 5  # 3 branches + fork + judge
    shared = [c.shared_prefix_tokens for c in sched.calls if c.program == "torch_mapreduce"]
    assert len(set(shared)) == 1 and shared[0] > 0
