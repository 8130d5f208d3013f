"""The executor on declarative programs: data flow, routing, bounded loops, fan-out, retries,
timeouts, events, and what the scheduler is told."""

from __future__ import annotations

import json
from typing import Annotated, TypedDict

import anyio
import pytest

from legato.programs.builder import END, Program, fan_out, llm, ref, tool, when
from legato.programs.builder import route as route_to
from legato.programs.calls import RunStatus
from legato.programs.executor import Executor
from legato.scheduler.events import RunFinished, RunStarted, ToolFinished, ToolStarted
from legato.tools.registry import ToolRegistry
from legato.tools.registry import tool as register_tool
from legato.tools.runtime import ToolRuntime
from tests.doubles.engines import FakeEngine
from tests.programs.helpers import RecordingScheduler, wait_until


def echo_last_line(prompt: str) -> str:
    lines = [line for line in prompt.splitlines() if line]
    return f"<{lines[-1] if lines else ''}>"


class QA(TypedDict):
    question: str
    answer: str
    checks: Annotated[list[str], "append"]
    count: Annotated[int, "add"]


def qa_program() -> Program:
    p = Program(QA, name="qa")
    p.prefix("qa_sys", "You answer questions.\n")
    p.add_node("answer", llm(prefix=["qa_sys"], slots=["question"], output="answer"))
    p.add_node("check", llm(slots=["answer"], output="checks"), max_visits=3)
    p.add_edge("answer", "check")
    p.add_conditional_edges("check", {"check": when("checks", "len_lt", 5)})
    return p


async def test_state_flows_through_nodes_and_loop_bound_ends_run() -> None:
    engine = FakeEngine(echo_last_line)
    sched = RecordingScheduler(engine)
    async with Executor(sched) as ex:
        result = await ex.run(qa_program().compile(), {"question": "why?"})
    assert result.status == RunStatus.SUCCEEDED, result.error
    assert result.output["answer"] == "<why?>"
    assert result.output["checks"] == ["<<why?>>"] * 3  # append reducer, loop bounded at 3 visits
    assert [s.node for s in result.steps] == ["answer", "check", "check", "check"]
    first = sched.calls[0]
    prefix_ids = tuple(engine.tokenizer.encode("You answer questions.\n"))
    assert first.prompt_token_ids[: len(prefix_ids)] == prefix_ids
    assert first.shared_prefix_tokens == len(prefix_ids)
    assert first.node == "answer" and first.program == "qa" and first.hints.is_last_step is False
    assert isinstance(sched.events[0], RunStarted) and sched.events[0].spec is not None
    assert sched.events[-1] == RunFinished(result.run_id, "succeeded")


async def test_declarative_router_and_python_router() -> None:
    class S(TypedDict):
        x: int
        path: str

    p = Program(S, name="router")
    p.add_node("start", llm(slots=["x"], output="path"))
    p.add_node("big", llm(slots=["x"], suffix="big", output="path"))
    p.add_node("small", llm(slots=["x"], suffix="small", output="path"))
    p.add_conditional_edges(
        "start", [route_to("big", when("x", "gt", 10))], destinations=["big", "small"], default="small"
    )
    prog = p.compile()
    assert json.loads(prog.to_json())["routers"][0]["default"] == "small"
    engine = FakeEngine(lambda prompt: prompt.rsplit("\n", 1)[-1])
    async with Executor(RecordingScheduler(engine)) as ex:
        assert (await ex.run(prog, {"x": 50})).output["path"] == "big"
        assert (await ex.run(prog, {"x": 5})).output["path"] == "small"

    p2 = Program(S, name="py")
    p2.add_node("start", llm(slots=["x"], output="path"))
    p2.add_node("big", llm(slots=["x"], suffix="big", output="path"))
    p2.add_conditional_edges("start", lambda s: "big" if s["x"] > 1 else "nowhere", destinations=["big", END])
    prog2 = p2.compile()
    with pytest.raises(ValueError, match="Python callables"):
        prog2.to_json()
    async with Executor(RecordingScheduler(engine)) as ex:
        assert (await ex.run(prog2, {"x": 2})).output["path"] == "big"
        bad = await ex.run(prog2, {"x": 0})
    assert bad.status == RunStatus.FAILED and "'nowhere'" in (bad.error or "")


async def test_fan_out_runs_items_in_parallel_and_joins_in_order() -> None:
    class S(TypedDict):
        docs: list[str]
        summaries: list[str]
        final: str

    p = Program(S, name="mapreduce")
    p.prefix("mr_sys", "Summarise.\n")
    p.add_node("map", fan_out("docs", llm(prefix=["mr_sys"], slots=["item"]), output="summaries"))
    p.add_node("reduce", llm(slots=["summaries"], output="final"))
    p.add_edge("map", "reduce")
    engine = FakeEngine(echo_last_line, first_token_latency_s=0.05)
    docs = [f"doc{i}" for i in range(20)]
    async with Executor(RecordingScheduler(engine)) as ex:
        t0 = anyio.current_time()
        result = await ex.run(p.compile(), {"docs": docs})
        elapsed = anyio.current_time() - t0
    assert result.output["summaries"] == [f"<{d}>" for d in docs]
    assert engine.peak_active == 20 and elapsed < 0.05 * 20 / 2  # parallel, not serial
    assert result.output["final"] == "<" + json.dumps([f"<{d}>" for d in docs], separators=(",", ":")) + ">"


async def test_json_output_with_schema_and_fallback() -> None:
    class S(TypedDict):
        q: str
        plan: dict[str, object]

    schema = {"type": "object", "required": ["action"]}
    p = Program(S, name="json")
    p.add_node(
        "plan",
        llm(
            slots=["q"],
            output="plan",
            output_schema=schema,
            on_parse_error="default",
            parse_default={"action": "none"},
        ),
    )
    replies = {"good": 'Sure: {"action": "search", "q": 1} done', "bad": "no json here"}
    engine = FakeEngine(lambda prompt: replies[prompt.strip()])
    async with Executor(RecordingScheduler(engine)) as ex:
        assert (await ex.run(p.compile(), {"q": "good"})).output["plan"] == {"action": "search", "q": 1}
        assert (await ex.run(p.compile(), {"q": "bad"})).output["plan"] == {"action": "none"}


async def test_llm_timeout_retries_then_error_route() -> None:
    class S(TypedDict):
        q: str
        a: str
        err: str

    p = Program(S, name="slow")
    p.add_node(
        "slow",
        llm(slots=["q"], output="a"),
        timeout_s=0.05,
        retries=2,
        backoff_s=0.01,
        on_error="fallback",
        error_output="err",
    )
    p.add_node("fallback", llm(suffix="fallback", output="a"))
    engine = FakeEngine(lambda prompt: "x" if prompt == "fallback" else "slow", token_latency_s=1.0)
    engine2 = FakeEngine(lambda prompt: "fast")
    async with Executor(RecordingScheduler(engine)) as ex:
        result = await ex.run(p.compile(), {"q": "hi"})
    assert result.status == RunStatus.SUCCEEDED
    assert "timed out after 0.05 s" in result.output["err"] and "after 3 attempts" in result.output["err"]
    assert (
        result.steps[0].status == "error"
        and result.steps[0].attempts == 3
        and result.steps[0].error_kind == "timeout"
    )
    assert result.steps[0].next == "fallback"
    async with Executor(RecordingScheduler(engine2)) as ex:
        assert (await ex.run(p.compile(), {"q": "hi"})).output["a"] == "fast"


async def test_events_stream_and_tool_notifications() -> None:
    registry = ToolRegistry()

    @register_tool(name="shout", registry=registry)
    async def shout(text: str) -> str:
        return text.upper()

    class S(TypedDict):
        q: str
        a: str
        loud: str

    p = Program(S, name="ev")
    p.add_node("ask", llm(slots=["q"], output="a"))
    p.add_node("shout", tool("shout", args={"text": ref("a")}, output="loud"))
    p.add_edge("ask", "shout")
    prog = p.compile(registry)
    sched = RecordingScheduler(FakeEngine(lambda prompt: "quiet words"))
    async with ToolRuntime(registry) as tools, Executor(sched, tools) as ex:
        handle = ex.submit(prog, {"q": "hi"})
        kinds: list[str] = []
        async with ex.subscribe(handle.run_id) as sub:
            async for event in sub:
                kinds.append(event.kind)
        result = await handle.wait(timeout_s=10)
    assert result.output["loud"] == "QUIET WORDS"
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    for kind in ("node_started", "token", "tool_started", "tool_output", "node_finished"):
        assert kind in kinds
    assert sched.calls[0].hints.next_tool == "shout" and sched.calls[0].hints.is_last_step
    tool_events = [e for e in sched.events if isinstance(e, ToolStarted | ToolFinished)]
    assert [type(e).__name__ for e in tool_events] == ["ToolStarted", "ToolFinished"]
    assert tool_events[1].ok  # type: ignore[union-attr]


async def test_bad_inputs_fail_cleanly() -> None:
    async with Executor(RecordingScheduler(FakeEngine())) as ex:
        result = await ex.run(qa_program().compile(), {"questoin": "typo"})
    assert result.status == RunStatus.FAILED and "'questoin'" in (result.error or "")


async def test_client_tool_puts_run_in_waiting_for_tool_until_submitted() -> None:
    from legato.tools.client import ClientTool

    reg = ToolRegistry()
    reg.register(ClientTool("ask_user", timeout=30))

    class S(TypedDict):
        q: str
        reply: object

    p = Program(S, name="client")
    p.add_node("ask", tool("ask_user", args={"question": ref("q")}, output="reply"))
    async with ToolRuntime(reg) as tools, Executor(RecordingScheduler(FakeEngine()), tools) as ex:
        handle = ex.submit(p.compile(reg), {"q": "ok?"})
        await wait_until(lambda: bool(tools.client.pending(handle.run_id)))
        assert handle.status == RunStatus.WAITING_FOR_TOOL
        (pending,) = tools.client.pending(handle.run_id)
        assert pending.name == "ask_user" and pending.args == {"question": "ok?"}
        tools.client.submit(handle.run_id, pending.call_id, {"answer": "yes"})
        result = await handle.wait(timeout_s=10)
    assert result.status == RunStatus.SUCCEEDED and result.output["reply"] == {"answer": "yes"}


async def test_fan_out_item_failure_fails_the_step_with_the_item_named() -> None:
    reg = ToolRegistry()

    @register_tool(name="picky", registry=reg)
    async def picky(x: int) -> int:
        if x == 3:
            raise ValueError("three is not allowed")
        await anyio.sleep(0.01)
        return x

    class S(TypedDict):
        xs: list[int]
        ys: list[int]
        err: str

    p = Program(S, name="map_fail")
    p.add_node(
        "m",
        fan_out("xs", tool("picky", args={"x": ref("item")}), output="ys", concurrency=2),
        error_output="err",
    )
    async with ToolRuntime(reg) as tools, Executor(RecordingScheduler(FakeEngine()), tools) as ex:
        good = await ex.run(p.compile(reg), {"xs": [1, 2]})
        bad = await ex.run(p.compile(reg), {"xs": [1, 2, 3, 4]})
    assert good.output["ys"] == [1, 2]
    assert (
        bad.status == RunStatus.FAILED
        and "item 3" not in (bad.error or "")
        and "item 2:" in (bad.error or "")
    )
    assert "three is not allowed" in (bad.error or "")
