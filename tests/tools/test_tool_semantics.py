"""Tool execution semantics: idempotency keys in the context, Python tools on worker threads
(a blocking tool cannot stall the event loop and is stopped at its timeout; the processes it
started are killed with it), subprocess tools see the key and die with the server."""

# These tools block and spawn with blocking calls on purpose, and the tests poll other
# processes (nothing there could signal an Event):
# ruff: noqa: ASYNC220, ASYNC222, ASYNC240, ASYNC110

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from legato.tools import SubprocessTool, ToolContext, ToolRegistry, ToolRuntime, tool
from legato.tools.reaper import OWNER_ENV


@pytest.fixture
def registry() -> ToolRegistry:
    return ToolRegistry()


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_the_idempotency_key_reaches_python_and_subprocess_tools(registry: ToolRegistry) -> None:
    @tool(registry=registry, idempotent=True)
    async def keyed(ctx: ToolContext) -> str:
        return ctx.idempotency_key

    registry.register(
        SubprocessTool("env_key", ["sh", "-c", "echo $LEGATO_IDEMPOTENCY_KEY"], idempotent=True)
    )
    assert registry.spec("keyed").idempotent and registry.spec("keyed").rerunnable
    async with ToolRuntime(registry) as rt:
        got = await rt.call("keyed", {}, run_id="r", call_id="c", tenant="t", idempotency_key="r:3:1")
        out = await rt.call("env_key", {}, run_id="r", call_id="c", tenant="t", idempotency_key="r:4:2")
        default = await rt.call("keyed", {}, run_id="r", call_id="c9", tenant="t")
    assert got.output == "r:3:1"
    assert isinstance(out.output, dict) and out.output["stdout"].strip() == "r:4:2"
    assert default.output == "c9"


async def test_a_blocking_python_tool_times_out_and_the_loop_stays_free(registry: ToolRegistry) -> None:
    @tool(registry=registry, timeout=0.3)
    async def blocks() -> str:
        time.sleep(2)  # noqa: ASYNC251 - blocking on purpose
        return "late"

    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            await anyio.sleep(0.01)

    async with ToolRuntime(registry) as rt, anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        started = time.monotonic()
        result = await rt.call("blocks", {}, run_id="r", call_id="c", tenant="t")
        elapsed = time.monotonic() - started
        tg.cancel_scope.cancel()
    assert result.error_kind == "timeout" and elapsed < 1.5
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert max(gaps) < 0.1, max(gaps)


async def test_processes_a_python_tool_started_die_with_it(registry: ToolRegistry, tmp_path: Path) -> None:
    pids = tmp_path / "pids"

    @tool(registry=registry, timeout=0.5)
    async def spawner() -> str:
        own = subprocess.Popen(["sleep", "60"])  # in the server's process group
        session = subprocess.Popen(["sleep", "60"], start_new_session=True)
        pids.write_text(f"{own.pid} {session.pid}")
        await anyio.sleep(30)
        return "never"

    @tool(registry=registry)
    async def quick_spawner() -> str:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        return str(child.pid)

    async with ToolRuntime(registry) as rt:
        result = await rt.call("spawner", {}, run_id="r", call_id="c", tenant="t")
        assert result.error_kind == "timeout"
        quick = await rt.call("quick_spawner", {}, run_id="r", call_id="c2", tenant="t")
    children = [int(p) for p in pids.read_text().split()] + [int(str(quick.output))]
    with anyio.fail_after(5):
        while any(alive(pid) for pid in children):
            for pid in children:  # reap them (this test process is their parent)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
            await anyio.sleep(0.05)


async def test_subprocess_tools_carry_the_owner_marker_and_die_with_their_parent(
    registry: ToolRegistry, tmp_path: Path
) -> None:
    """A server stand-in (a Python process) starts a subprocess tool and is SIGKILLed: the
    tool's leader dies with it (PR_SET_PDEATHSIG)."""
    pidfile = tmp_path / "pid"
    script = f"""
import anyio
from legato.tools import SubprocessTool, ToolRegistry, ToolRuntime
reg = ToolRegistry()
reg.register(SubprocessTool("s", ["sh", "-c", "env > {pidfile}.env; echo $$ > {pidfile}; exec sleep 60"]))
async def main():
    async with ToolRuntime(reg) as rt:
        await rt.call("s", {{}}, run_id="r", call_id="c", tenant="t")
anyio.run(main)
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    server = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        with anyio.fail_after(20):
            while not pidfile.exists() or not pidfile.read_text().strip():
                await anyio.sleep(0.05)
        tool_pid = int(pidfile.read_text())
        assert f"{OWNER_ENV}={server.pid}." in Path(f"{pidfile}.env").read_text()
        server.kill()
        server.wait()
        with anyio.fail_after(5):
            while alive(tool_pid):
                await anyio.sleep(0.05)
    finally:
        server.kill()
        server.wait()
