"""Async Python functions as tools.

The function's keyword parameters *are* the tool's parameters: a pydantic model built from the
signature validates model-produced arguments (so a tool never runs with arguments it did not ask
for) and yields the JSON Schema shown to models and REST clients. The wrapped object stays an
ordinary awaitable callable, so user code can call the function directly in tests or elsewhere.
As a tool it runs on a worker thread with its own event loop (`legato.tools.worker`), so a tool
that blocks cannot stall the server and its timeout holds.
"""

from __future__ import annotations

import functools
import inspect
import logging
import typing
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Generic, ParamSpec, TypeVar

import anyio
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic.errors import PydanticUserError
from pydantic_core import PydanticSerializationError, to_jsonable_python

from legato.tools.base import BadToolArgsError, ToolContext, ToolResult, ToolSpec
from legato.tools.worker import WorkerCall, run_on_worker

P = ParamSpec("P")
R = TypeVar("R")

log = logging.getLogger("legato.tools")


def _is_async_callable(fn: object) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004  (callable objects with an async __call__)
    return not inspect.isfunction(fn) and inspect.iscoroutinefunction(call)


def _describe_validation_error(exc: ValidationError) -> str:
    """One line per problem, naming the argument, in words a model can act on."""
    parts: list[str] = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(arguments)"
        if err["type"] == "missing":
            parts.append(f"missing required argument {loc!r}")
        elif err["type"] == "extra_forbidden":
            parts.append(f"unexpected argument {loc!r}")
        else:
            parts.append(f"argument {loc!r}: {err['msg']} (got {err.get('input')!r:.80})")
    return "; ".join(parts)


class PythonTool(Generic[P, R]):
    """An `async def` function registered as a tool. Calling it calls the function unchanged."""

    def __init__(
        self,
        fn: Callable[P, Coroutine[Any, Any, R]],
        *,
        name: str | None = None,
        pure: bool = False,
        idempotent: bool = False,
        timeout: float = 30.0,
        description: str = "",
        expected_latency: float | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"@tool decorates an async function, got {fn!r}")
        qualname = getattr(fn, "__qualname__", repr(fn))
        if inspect.isasyncgenfunction(fn):
            raise TypeError(f"@tool: {qualname} is an async generator; a tool must return one value")
        if not _is_async_callable(fn):
            raise TypeError(
                f"@tool needs an `async def` function, but {qualname} is not async. Make it `async def` "
                "(run blocking work inside it with `await anyio.to_thread.run_sync(...)`)."
            )
        self._fn = fn
        tool_name = name if name is not None else getattr(fn, "__name__", "")
        self._ctx_param, self._params, self._model = self._inspect(fn, tool_name, qualname)
        doc = inspect.getdoc(fn) or ""
        self._spec = ToolSpec(
            name=tool_name,
            kind="python",
            pure=pure,
            idempotent=idempotent,
            timeout_s=timeout,
            description=description or doc.strip(),
            expected_latency_s=expected_latency,
            params_schema=self._schema(qualname),
        )
        functools.update_wrapper(self, fn)

    @staticmethod
    def _inspect(
        fn: Callable[..., Any], tool_name: str, qualname: str
    ) -> tuple[bool, tuple[str, ...], type[BaseModel]]:
        try:
            hints = typing.get_type_hints(fn, include_extras=True)
        except Exception as exc:  # NameError for forward refs, TypeError for odd objects
            raise TypeError(f"@tool: cannot resolve the type hints of {qualname}: {exc}") from exc
        params = list(inspect.signature(fn).parameters.values())
        has_ctx = bool(params) and hints.get(params[0].name) is ToolContext
        if has_ctx:
            params = params[1:]
        fields: dict[str, Any] = {}
        names: list[str] = []
        for i, param in enumerate(params):
            if hints.get(param.name) is ToolContext:
                raise TypeError(f"@tool: {qualname}: the ToolContext parameter must be the first one")
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
                raise TypeError(
                    f"@tool: {qualname}: parameter {param.name!r} must be a plain or keyword-only "
                    "parameter (tool arguments are passed by name)"
                )
            if param.name.startswith("_"):
                raise TypeError(f"@tool: {qualname}: parameter {param.name!r} must not start with '_'")
            default = ... if param.default is param.empty else param.default
            # Fields get neutral internal names with the real name as alias, so parameters called
            # `json`, `copy` or `schema` do not clash with BaseModel attributes.
            fields[f"p{i}"] = (hints.get(param.name, Any), Field(default, alias=param.name))
            names.append(param.name)
        try:
            model = create_model(
                f"{tool_name or 'tool'}_args",
                __config__=ConfigDict(extra="forbid", populate_by_name=False),
                **fields,
            )
        except (PydanticUserError, TypeError) as exc:
            raise TypeError(f"@tool: {qualname}: unsupported parameter types: {exc}") from exc
        return has_ctx, tuple(names), typing.cast(type[BaseModel], model)

    def _schema(self, qualname: str) -> dict[str, Any]:
        try:
            schema = self._model.model_json_schema(by_alias=True)
        except Exception as exc:  # PydanticInvalidForJsonSchema and friends
            raise TypeError(f"@tool: {qualname}: parameter types have no JSON Schema: {exc}") from exc
        schema.pop("title", None)
        return schema

    @property
    def spec(self) -> ToolSpec:
        return self._spec

    @property
    def fn(self) -> Callable[P, Coroutine[Any, Any, R]]:
        return self._fn

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        return self._fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<PythonTool {self._spec.name!r}>"

    def validate_args(self, args: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(args, Mapping):
            raise BadToolArgsError(f"arguments must be an object, got {type(args).__name__}")
        try:
            parsed = self._model.model_validate(dict(args))
        except ValidationError as exc:
            raise BadToolArgsError(_describe_validation_error(exc)) from None
        return {name: getattr(parsed, f"p{i}") for i, name in enumerate(self._params)}

    async def invoke(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        name = self._spec.name
        fn: Callable[..., Coroutine[Any, Any, R]] = self._fn
        value: Any = None
        call = WorkerCall()
        with anyio.move_on_after(self._spec.timeout_s) as scope:
            try:
                value = await run_on_worker(lambda: fn(ctx, **args) if self._ctx_param else fn(**args), call)
            except Exception as exc:
                # The traceback goes to the log, never to the model or the client.
                log.warning("tool %r (run %s, call %s) raised", name, ctx.run_id, ctx.call_id, exc_info=True)
                return ToolResult.failure("exception", f"{type(exc).__name__}: {exc}")
        if scope.cancelled_caught:
            return ToolResult.failure("timeout", f"tool {name!r} timed out after {self._spec.timeout_s:g}s")
        try:
            output = to_jsonable_python(value)
        except PydanticSerializationError as exc:
            return ToolResult.failure(
                "exception", f"tool {name!r} returned a value that is not JSON-serialisable: {exc}"
            )
        return ToolResult(ok=True, output=output)
