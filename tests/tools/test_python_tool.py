"""Async Python tools: decorator, argument validation, context injection, failures as results."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

import legato
from legato.tools import (
    ToolContext,
    ToolRegistry,
    ToolRuntime,
    UnknownToolError,
    default_registry,
    tool,
)


@pytest.fixture
def registry() -> ToolRegistry:
    return ToolRegistry()


async def test_args_validated_and_coerced(registry: ToolRegistry) -> None:
    @tool(registry=registry)
    async def add(a: int, b: int = 10) -> int:
        """Add two integers."""
        return a + b

    spec = registry.spec("add")
    assert spec.kind == "python" and spec.description == "Add two integers."
    assert spec.params_schema is not None
    assert spec.params_schema["required"] == ["a"]
    assert set(spec.params_schema["properties"]) == {"a", "b"}

    async with ToolRuntime(registry) as rt:
        ok = await rt.call("add", {"a": "5"}, run_id="r", call_id="c1", tenant="t")
        assert ok.ok and ok.output == 15

        bad = await rt.call("add", {"a": "five", "c": 1}, run_id="r", call_id="c2", tenant="t")
        assert not bad.ok and bad.error_kind == "bad_args"
        assert bad.error is not None
        assert "'a'" in bad.error and "valid integer" in bad.error
        assert "unexpected argument 'c'" in bad.error

        missing = await rt.call("add", {}, run_id="r", call_id="c3", tenant="t")
        assert missing.error_kind == "bad_args" and "missing required argument 'a'" in (missing.error or "")

        not_object = await rt.call("add", ["a"], run_id="r", call_id="c4", tenant="t")  # type: ignore[arg-type]
        assert not_object.error_kind == "bad_args"
        # Bad arguments say nothing about the tool's latency.
        assert rt.stats.count("add") == 1


async def test_context_injected(registry: ToolRegistry) -> None:
    seen: list[ToolContext] = []

    @tool("whoami", registry=registry)
    async def whoami(ctx: ToolContext, note: str) -> dict[str, str]:
        seen.append(ctx)
        (ctx.workdir / "note.txt").write_text(note)
        return {"run": ctx.run_id, "call": ctx.call_id, "tenant": ctx.tenant}

    assert "ctx" not in (registry.spec("whoami").params_schema or {}).get("properties", {})
    async with ToolRuntime(registry) as rt:
        result = await rt.call("whoami", {"note": "hi"}, run_id="run-7", call_id="c9", tenant="acme")
        assert result.ok
        assert result.output == {"run": "run-7", "call": "c9", "tenant": "acme"}
        workdir = seen[0].workdir
        assert workdir.is_dir() and (workdir / "note.txt").read_text() == "hi"
        assert workdir.parent == rt.envs.root


async def test_exception_becomes_readable_error(
    registry: ToolRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    @tool(registry=registry)
    async def explode(x: int) -> int:
        raise ValueError(f"cannot handle {x}")

    async with ToolRuntime(registry) as rt:
        result = await rt.call("explode", {"x": 3}, run_id="r", call_id="c", tenant="t")
    assert not result.ok and result.error_kind == "exception"
    assert result.error == "ValueError: cannot handle 3"
    assert "Traceback" not in (result.error or "")
    # The traceback is logged for the operator.
    assert any(rec.exc_info for rec in caplog.records if rec.name == "legato.tools")


async def test_timeout(registry: ToolRegistry) -> None:
    @tool(registry=registry, timeout=0.2)
    async def slow() -> str:
        await anyio.sleep(30)
        return "never"

    async with ToolRuntime(registry) as rt:
        with anyio.fail_after(5):
            result = await rt.call("slow", {}, run_id="r", call_id="c", tenant="t")
    assert not result.ok and result.error_kind == "timeout"
    assert "0.2s" in (result.error or "")
    assert 0.15 < result.duration_s < 3


async def test_non_json_output_is_an_error(registry: ToolRegistry) -> None:
    @tool(registry=registry)
    async def weird() -> object:
        return object()

    async with ToolRuntime(registry) as rt:
        result = await rt.call("weird", {}, run_id="r", call_id="c", tenant="t")
    assert result.error_kind == "exception" and "JSON" in (result.error or "")


async def test_decorated_function_stays_callable(registry: ToolRegistry) -> None:
    @tool(registry=registry)
    async def double(x: int) -> int:
        return 2 * x

    assert await double(x=21) == 42
    assert await double(4) == 8
    assert double.fn.__name__ == "double" and double.spec.name == "double"


def test_bare_decorator_uses_default_registry() -> None:
    @legato.tool
    async def legato_test_bare_tool(x: str) -> str:
        return x

    try:
        assert "legato_test_bare_tool" in default_registry
        assert default_registry.get("legato_test_bare_tool") is legato_test_bare_tool
    finally:
        default_registry.unregister("legato_test_bare_tool")


def test_decorator_errors(registry: ToolRegistry) -> None:
    with pytest.raises(TypeError, match="async def"):
        tool(registry=registry)(lambda x: x)

    with pytest.raises(TypeError, match="first one"):

        @tool(registry=registry)
        async def late_ctx(x: int, ctx: ToolContext) -> int:
            return x

    with pytest.raises(TypeError, match="passed by name"):

        @tool(registry=registry)
        async def var_args(*xs: int) -> int:
            return 0

    with pytest.raises(ValueError, match="invalid tool name"):

        @tool("has space", registry=registry)
        async def spaced() -> None:
            return None


def test_duplicate_names(registry: ToolRegistry) -> None:
    @tool("dup", registry=registry)
    async def first() -> int:
        return 1

    with pytest.raises(ValueError, match="already registered"):

        @tool("dup", registry=registry)
        async def second() -> int:
            return 2

    @tool("dup", registry=registry, replace=True)
    async def third() -> int:
        return 3

    assert registry.get("dup") is third
    assert registry.names() == ["dup"]


async def test_unknown_tool_lists_known_names(registry: ToolRegistry) -> None:
    @tool(registry=registry)
    async def alpha() -> None:
        return None

    async with ToolRuntime(registry) as rt:
        with pytest.raises(UnknownToolError) as info:
            await rt.call("beta", {}, run_id="r", call_id="c", tenant="t")
    assert str(info.value) == "unknown tool 'beta'; known tools: 'alpha'"
    assert isinstance(info.value, KeyError)


async def test_path_args_and_latency_recorded(registry: ToolRegistry) -> None:
    @tool(registry=registry, expected_latency=2.5)
    async def stat_file(ctx: ToolContext, name: str) -> bool:
        return (ctx.workdir / Path(name).name).exists()

    async with ToolRuntime(registry) as rt:
        assert rt.stats.expected_latency("stat_file") == 2.5  # the spec's prior before any sample
        result = await rt.call("stat_file", {"name": "x"}, run_id="r", call_id="c", tenant="t")
        assert result.ok and result.output is False
        assert rt.stats.count("stat_file") == 1
        assert rt.stats.expected_latency("stat_file") == pytest.approx(result.duration_s)
