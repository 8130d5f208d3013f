"""Tool registry and the `@tool` decorator.

A registry maps names to tools of every kind. Programs refer to tools by name only (that is what
makes a declarative program serialisable), so the registry is where the executor and the program
validator resolve those names. `default_registry` is what `@legato.tool` registers into; tests and
multi-tenant servers pass their own `ToolRegistry`.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterator
from typing import Any, ParamSpec, TypeVar, overload

from legato.tools.base import Tool, ToolSpec, UnknownToolError
from legato.tools.python_tool import PythonTool

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T", bound=Tool)


class ToolRegistry:
    """Name -> tool. Registering a taken name is an error unless `replace=True`."""

    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}

    def register(self, tool: T, *, replace: bool = False) -> T:
        if not isinstance(tool, Tool):
            raise TypeError(
                f"cannot register {tool!r}: a tool needs `spec`, `validate_args` and `invoke` "
                "(use @tool, SubprocessTool or ClientTool)"
            )
        name = tool.spec.name
        if name in self._tools and not replace and self._tools[name] is not tool:
            raise ValueError(
                f"a tool named {name!r} is already registered ({self._tools[name]!r}); "
                "pick another name or pass replace=True"
            )
        self._tools[name] = tool
        return tool

    def unregister(self, name: str) -> None:
        if name not in self._tools:
            raise UnknownToolError(name, self._tools)
        del self._tools[name]

    def get(self, name: str) -> Tool:
        try:
            return self._tools[name]
        except KeyError:
            raise UnknownToolError(name, self._tools) from None

    def spec(self, name: str) -> ToolSpec:
        return self.get(name).spec

    def specs(self) -> list[ToolSpec]:
        return [self._tools[n].spec for n in self.names()]

    def names(self) -> list[str]:
        return sorted(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


default_registry = ToolRegistry()

_AsyncFn = Callable[P, Coroutine[Any, Any, R]]


@overload
def tool(name: _AsyncFn[P, R], /) -> PythonTool[P, R]: ...


@overload
def tool(
    name: str | None = None,
    *,
    pure: bool = False,
    idempotent: bool = False,
    timeout: float = 30.0,
    description: str = "",
    expected_latency: float | None = None,
    registry: ToolRegistry | None = None,
    replace: bool = False,
) -> Callable[[_AsyncFn[P, R]], PythonTool[P, R]]: ...


def tool(
    name: str | _AsyncFn[P, R] | None = None,
    *,
    pure: bool = False,
    idempotent: bool = False,
    timeout: float = 30.0,
    description: str = "",
    expected_latency: float | None = None,
    registry: ToolRegistry | None = None,
    replace: bool = False,
) -> PythonTool[P, R] | Callable[[_AsyncFn[P, R]], PythonTool[P, R]]:
    """Register an `async def` function as a tool: ``@tool`` or ``@tool("name", pure=True, timeout=5)``
    (``idempotent=True``: see `ToolSpec`).

    The function's parameters are the tool's arguments (validated from its type hints); a first
    parameter annotated `ToolContext` receives the call's context. The docstring is the default
    description. The result is still directly awaitable: ``await my_tool(x=1)``.
    """
    target = registry if registry is not None else default_registry

    def decorate(fn: _AsyncFn[P, R]) -> PythonTool[P, R]:
        wrapped = PythonTool(
            fn,
            name=name if isinstance(name, str) else None,
            pure=pure,
            idempotent=idempotent,
            timeout=timeout,
            description=description,
            expected_latency=expected_latency,
        )
        return target.register(wrapped, replace=replace)

    if callable(name):  # bare @tool
        return decorate(name)
    if name is not None and not isinstance(name, str):
        raise TypeError(f"@tool(name): name must be a string, got {name!r}")
    return decorate
