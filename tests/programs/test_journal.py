"""The step journal: finished steps are recorded before the next starts, and a resumed run
(same run id, same journal store, even a new executor) skips them."""

from __future__ import annotations

from typing import Annotated, Any, TypedDict

from legato.programs.agent import AgentContext, agent
from legato.programs.builder import END, Program, llm, ref, tool
from legato.programs.calls import RunStatus
from legato.programs.executor import Executor
from legato.programs.journal import InMemoryJournalStore, JournalStore, Step
from legato.tools.registry import ToolRegistry
from legato.tools.registry import tool as register_tool
from legato.tools.runtime import ToolRuntime
from tests.doubles.engines import FakeEngine
from tests.programs.helpers import RecordingScheduler, wait_until


class Flaky:
    def __init__(self) -> None:
        self.broken = True
        self.calls = 0


def flaky_registry(flaky: Flaky) -> ToolRegistry:
    reg = ToolRegistry()

    @register_tool(name="flaky", registry=reg)
    async def flaky_tool(text: str) -> str:
        flaky.calls += 1
        if flaky.broken:
            raise ConnectionError("service unavailable")
        return text[::-1]

    return reg


class S(TypedDict):
    q: str
    a: str
    b: str
    c: str


class CheckingStore(InMemoryJournalStore):
    """Asserts each step is journaled before the engine sees the next call."""

    def __init__(self, engine: FakeEngine) -> None:
        super().__init__()
        self.engine = engine
        self.requests_at_append: list[int] = []

    async def append(self, run_id: str, step: Step) -> None:
        self.requests_at_append.append(len(self.engine.requests))
        await super().append(run_id, step)


async def test_failed_run_resumes_after_its_finished_steps() -> None:
    flaky = Flaky()
    reg = flaky_registry(flaky)
    p = Program(S, name="resumable")
    p.add_node("one", llm(slots=["q"], output="a"))
    p.add_node("two", llm(slots=["a"], output="b"))
    p.add_node("three", tool("flaky", args={"text": ref("b")}, output="c"))
    p.add_edge("one", "two")
    p.add_edge("two", "three")
    program = p.compile(reg)
    engine = FakeEngine()
    store = CheckingStore(engine)
    assert isinstance(store, JournalStore)
    async with ToolRuntime(reg) as tools:
        async with Executor(RecordingScheduler(engine), tools, journal=store) as ex:
            first = await ex.run(program, {"q": "hello"}, run_id="r1")
        assert first.status == RunStatus.FAILED and "service unavailable" in (first.error or "")
        assert [(s.node, s.status) for s in first.steps] == [
            ("one", "ok"),
            ("two", "ok"),
            ("three", "failed"),
        ]
        # step k journaled before call k+1 was made; the impure tool `flaky` also gets a
        # "started" marker journaled before it runs (so a crash mid-tool is never re-run blindly)
        assert store.requests_at_append == [1, 2, 2, 2]

        flaky.broken = False
        async with Executor(RecordingScheduler(engine), tools, journal=store) as ex:  # a "restarted" server
            second = await ex.run(program, {"q": "hello"}, run_id="r1")
    assert second.status == RunStatus.SUCCEEDED, second.error
    assert len(engine.requests) == 2  # the two LLM steps were not redone
    assert flaky.calls == 2
    assert second.output["c"] == second.output["b"][::-1]
    assert [s.node for s in second.steps] == ["one", "two", "three", "three"]


async def test_cancelled_run_resumes_where_it_stopped() -> None:
    p = Program(S, name="cancel_resume")
    for name, src, dst in (("one", "q", "a"), ("two", "a", "b"), ("three", "b", "c")):
        p.add_node(name, llm(slots=[src], output=dst))
    p.add_edge("one", "two")
    p.add_edge("two", "three")
    program = p.compile()
    engine = FakeEngine(lambda prompt: prompt.strip() + "!", hold_if=lambda prompt: prompt.startswith("hi!!"))
    store = InMemoryJournalStore()
    async with Executor(RecordingScheduler(engine), journal=store) as ex:
        handle = ex.submit(program, {"q": "hi"}, run_id="r2")
        await wait_until(lambda: engine.held > 0)
        assert ex.cancel("r2") and not ex.cancel("no-such-run")
        cancelled = await handle.wait(timeout_s=10)
    assert cancelled.status == RunStatus.CANCELLED and [s.node for s in cancelled.steps] == ["one", "two"]
    engine.release()
    async with Executor(RecordingScheduler(engine), journal=store) as ex:
        resumed = await ex.run(program, {"q": "hi"}, run_id="r2")
    assert resumed.output == {"q": "hi", "a": "hi!", "b": "hi!!", "c": "hi!!!"}
    assert [r.prompt_token_ids for r in engine.requests].count(engine.requests[0].prompt_token_ids) == 1


async def test_agent_resume_replays_journaled_results() -> None:
    flaky = Flaky()
    reg = flaky_registry(flaky)

    @agent
    async def writer(ctx: AgentContext, topic: str) -> dict[str, Any]:
        outline = await ctx.llm("outline:", topic)
        parts = await ctx.gather(lambda c: c.llm("part1:", outline), lambda c: c.llm("part2:", outline))
        checked = await ctx.tool("flaky", text=parts[0])
        return {"outline": outline, "parts": parts, "checked": checked}

    engine = FakeEngine()
    store = InMemoryJournalStore()
    async with ToolRuntime(reg) as tools:
        async with Executor(RecordingScheduler(engine), tools, journal=store) as ex:
            first = await ex.run(writer, {"topic": "kv caches"}, run_id="a1")
        assert first.status == RunStatus.FAILED and "ToolCallError" in (first.error or "")
        assert sorted(s.key for s in first.steps) == ["0", "1.b0.0", "1.b1.0"]
        flaky.broken = False
        async with Executor(RecordingScheduler(engine), tools, journal=store) as ex:
            second = await ex.run(writer, {"topic": "kv caches"}, run_id="a1")
    assert second.status == RunStatus.SUCCEEDED, second.error
    assert len(engine.requests) == 3  # nothing regenerated
    assert second.output["checked"] == second.output["parts"][0][::-1]
    assert (
        second.trace is not None
        and [e.replayed for e in second.trace.events if e.kind == "llm"] == [True] * 3
    )


async def test_resume_after_a_failed_router_does_not_apply_writes_twice() -> None:
    class T(TypedDict):
        q: str
        notes: Annotated[list[str], "append"]

    router_broken = [True]

    def pick(state: dict[str, Any]) -> str:
        return "nowhere" if router_broken[0] else END

    p = Program(T, name="append_once")
    p.add_node("note", llm(slots=["q"], output="notes"))
    p.add_conditional_edges("note", pick, destinations=[END])
    program = p.compile()
    store = InMemoryJournalStore()
    engine = FakeEngine()
    async with Executor(RecordingScheduler(engine), journal=store) as ex:
        failed = await ex.run(program, {"q": "x"}, run_id="r3")
        assert failed.status == RunStatus.FAILED and "'nowhere'" in (failed.error or "")
        assert failed.steps[0].writes == {"notes": engine.responder("x\n")}  # journaled with the failure
        router_broken[0] = False
        resumed = await ex.run(program, {"q": "x"}, run_id="r3")
    assert resumed.status == RunStatus.SUCCEEDED and len(resumed.output["notes"]) == 1
