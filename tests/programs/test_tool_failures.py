"""A killed subprocess tool, a tool timeout and a raising tool each end the step with a recorded,
readable error; the run follows the node's error route, or fails cleanly without one."""

from __future__ import annotations

import sys
from typing import TypedDict

import pytest

from legato.programs.builder import Program, llm, ref, tool
from legato.programs.calls import RunStatus
from legato.programs.executor import Executor
from legato.tools.registry import ToolRegistry
from legato.tools.registry import tool as register_tool
from legato.tools.runtime import ToolRuntime
from legato.tools.subprocess_tool import SubprocessTool
from tests.doubles.engines import FakeEngine
from tests.programs.helpers import RecordingScheduler

PY = sys.executable


def registry() -> ToolRegistry:
    reg = ToolRegistry()
    reg.register(
        SubprocessTool("suicide", [PY, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    )
    reg.register(SubprocessTool("sleepy", [PY, "-c", "import time; time.sleep(30)"], timeout=0.3))

    @register_tool(name="boom", registry=reg)
    async def boom(x: str) -> str:
        raise RuntimeError(f"cannot handle {x}")

    return reg


class S(TypedDict):
    q: str
    out: str
    err: str
    recovered: str


def program(tool_name: str, with_route: bool) -> Program:
    p = Program(S, name=f"fail_{tool_name}")
    route = {"on_error": "recover", "error_output": "err"} if with_route else {}
    p.add_node(
        "step", tool(tool_name, args={"x": ref("q")} if tool_name == "boom" else {}, output="out", **route)
    )
    p.add_node("recover", llm(slots=["err"], output="recovered"))
    if not with_route:
        p.add_edge("step", "recover")
    return p


EXPECTED = {
    "suicide": ("killed", "SIGKILL"),
    "sleepy": ("timeout", "timed out"),
    "boom": ("exception", "cannot handle hi"),
}


@pytest.mark.parametrize("tool_name", sorted(EXPECTED))
async def test_tool_failure_follows_error_route(tool_name: str) -> None:
    kind, text = EXPECTED[tool_name]
    reg = registry()
    async with (
        ToolRuntime(reg) as tools,
        Executor(RecordingScheduler(FakeEngine(lambda p: "ok")), tools) as ex,
    ):
        result = await ex.run(program(tool_name, with_route=True).compile(reg), {"q": "hi"})
    assert result.status == RunStatus.SUCCEEDED, result.error
    step = result.steps[0]
    assert step.status == "error" and step.error_kind == kind and step.next == "recover"
    assert text in (step.error or "") and f"tool {tool_name!r}" in (step.error or "")
    assert result.output["err"] == step.error and result.output["recovered"] == "ok"
    assert [s.node for s in result.steps] == ["step", "recover"]


@pytest.mark.parametrize("tool_name", sorted(EXPECTED))
async def test_tool_failure_without_route_fails_run_cleanly(tool_name: str) -> None:
    kind, text = EXPECTED[tool_name]
    reg = registry()
    async with ToolRuntime(reg) as tools, Executor(RecordingScheduler(FakeEngine()), tools) as ex:
        result = await ex.run(program(tool_name, with_route=False).compile(reg), {"q": "hi"})
        assert not ex.active_runs()
    assert result.status == RunStatus.FAILED
    assert text in (result.error or "") and f"[{kind}]" in (result.error or "")
    assert [(s.node, s.status) for s in result.steps] == [("step", "failed")]
    assert result.output is None
