"""Tools for the REST service tests: `legato serve --tools tests/server/server_tools.py`.

`record` has a side effect (appends a line per execution), so tests can count executions;
`gate` is pure and waits for a file to exist (a controllable "tool is running" window);
`effect_gate` is the impure version of `gate` (a tool interrupted mid-flight must not re-run).
`slow_effect`, `gated_effect` (`slow_effect` until a file exists), `keyed_effect` (idempotent),
`gated_keyed_effect`, `blocking`, `ask_client` and `spawn_sleepers` serve the drain, scale-out
and tool-process tests.
"""

from __future__ import annotations

import time

import anyio

from legato.tools.base import ToolContext
from legato.tools.client import ClientTool
from legato.tools.registry import ToolRegistry, tool
from legato.tools.subprocess_tool import SubprocessTool

registry = ToolRegistry()


async def _wait_for(path: str) -> None:
    # polling: the file is created by the test process, nothing here can signal an Event
    while not await anyio.Path(path).exists():  # noqa: ASYNC110
        await anyio.sleep(0.05)


async def _append(path: str, line: str) -> None:
    async with await anyio.open_file(path, "a", encoding="utf-8") as f:
        await f.write(line)


@tool(registry=registry)
async def record(ctx: ToolContext, path: str, text: str) -> str:
    """Append '<run id> <node call>' to `path`: one line per execution."""
    await _append(path, f"{ctx.run_id} {ctx.call_id}\n")
    return f"recorded {len(text)} chars"


@tool(registry=registry, pure=True, timeout=300)
async def gate(path: str, value: str) -> str:
    """Wait until `path` exists, then return `value` reversed (pure: re-running is harmless)."""
    await _wait_for(path)
    return value[::-1]


@tool(registry=registry, timeout=300)
async def effect_gate(ctx: ToolContext, path: str, log: str) -> str:
    """Note that it started (in `log`), then wait until `path` exists. Not pure."""
    await _append(log, f"{ctx.run_id}\n")
    await _wait_for(path)
    return "done"


@tool(registry=registry, pure=True)
async def word_count(text: str) -> int:
    """Count the words of a text."""
    return len(text.split())


@tool(registry=registry, timeout=60)
async def slow_effect(ctx: ToolContext, path: str, seconds: float) -> str:
    """Not pure: log 'start <run>', sleep, log 'end <run>' (a drain must let it finish)."""
    await _append(path, f"start {ctx.run_id}\n")
    await anyio.sleep(seconds)
    await _append(path, f"end {ctx.run_id}\n")
    return "done"


@tool(registry=registry, timeout=300)
async def gated_effect(ctx: ToolContext, path: str, gate: str) -> str:
    """Not pure: log 'start <run>', wait until `gate` exists, log 'end <run>' (a drain must wait)."""
    await _append(path, f"start {ctx.run_id}\n")
    await _wait_for(gate)
    await _append(path, f"end {ctx.run_id}\n")
    return "done"


@tool(registry=registry, idempotent=True, timeout=300)
async def gated_keyed_effect(ctx: ToolContext, path: str, gate: str) -> str:
    """`keyed_effect` that waits until `gate` exists instead of sleeping."""
    await _append(path, f"{ctx.idempotency_key} {ctx.run_id}\n")
    await _wait_for(gate)
    return ctx.idempotency_key


@tool(registry=registry, idempotent=True, timeout=60)
async def keyed_effect(ctx: ToolContext, path: str, seconds: float) -> str:
    """Idempotent: log '<key> <run>' per real execution, sleep, return the key."""
    await _append(path, f"{ctx.idempotency_key} {ctx.run_id}\n")
    await anyio.sleep(seconds)
    return ctx.idempotency_key


@tool(registry=registry, timeout=0.5)
async def blocking(seconds: float) -> str:
    """Blocks its thread (a synchronous sleep inside `async def`): its timeout must still hold."""
    time.sleep(seconds)  # noqa: ASYNC251 - blocking on purpose
    return "woke"


registry.register(ClientTool("ask_client", timeout=300, description="answered by the client"))
registry.register(
    SubprocessTool(
        "spawn_sleepers",
        ["bash", "-c", 'sleep 300 & sleep 300 & echo $$ > "$1"; wait', "bash", "{pidfile}"],
        timeout=300,
    )
)
