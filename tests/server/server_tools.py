"""Tools for the REST service tests: `legato serve --tools tests/server/server_tools.py`.

`record` has a side effect (appends a line per execution), so tests can count executions;
`gate` is pure and waits for a file to exist (a controllable "tool is running" window);
`effect_gate` is the impure version of `gate` (a tool interrupted mid-flight must not re-run).
"""

from __future__ import annotations

import anyio

from legato.tools.base import ToolContext
from legato.tools.registry import ToolRegistry, tool

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
