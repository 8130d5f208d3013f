"""Client-side tools: the tool runs on the client's machine, the run waits for its result.

This is the OpenAI function-calling shape: the model asks for a tool, the server parks the run in
`waiting_for_tool` (its KV prefix can stay pinned meanwhile), the client executes the tool and
submits the output, the run resumes. The broker is the rendezvous: `wait` parks the executor's
task on an event, `submit` (from the REST handler, same event loop) resolves it.

Several servers on one store: a `CallBoard` (`legato.server.store.redis_client_calls`) shares the
waiting calls and their results, so a result posted to any instance reaches the run's driver
(`deliver`), and a result posted while the run moves between instances waits for its next wait
of the same call id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import anyio
from pydantic_core import PydanticSerializationError, to_jsonable_python

from legato.tools.base import BadToolArgsError, JSONValue, ToolContext, ToolResult, ToolSpec

Resolution = Literal["submitted", "timed out", "cancelled"]

# Per run, how many resolved call ids are remembered to tell "double submission" from "unknown call".
_MAX_RESOLVED_PER_RUN = 4096


class UnknownClientCallError(LookupError):
    """`submit` for a run or call that is not waiting for a client tool."""


class DuplicateSubmissionError(RuntimeError):
    """`submit` for a call that already has a result (or timed out, or was cancelled)."""


@dataclass(frozen=True, slots=True)
class PendingToolCall:
    """A client tool call waiting for its result: what the client must execute."""

    run_id: str
    call_id: str
    name: str
    args: dict[str, Any]
    timeout_s: float


def submitted_result(call_id: str, output: Any, error: str | None) -> ToolResult:
    """A client's submission as the waiting tool's result (ValueError: not JSON data)."""
    try:
        value: JSONValue = to_jsonable_python(output)
    except PydanticSerializationError as exc:
        raise ValueError(f"client tool output for call {call_id!r} is not JSON-serialisable: {exc}") from exc
    if error is not None:
        return ToolResult.failure("exception", str(error), value)
    return ToolResult(ok=True, output=value)


class CallBoard(Protocol):
    """Client calls waiting and their results, shared by the servers of one store."""

    async def posted(self, call: PendingToolCall) -> ToolResult | None:
        """Announce a waiting call; a result already submitted for it is returned."""
        ...

    async def settle(self, run_id: str, call_id: str, resolution: Resolution) -> ToolResult | None:
        """The wait ended (`submitted` or `timed out`); a result that beat the timeout is returned."""
        ...


@dataclass(slots=True)
class _Waiter:
    pending: PendingToolCall
    done: anyio.Event = field(default_factory=anyio.Event)
    result: ToolResult | None = None


class ClientToolBroker:
    """Rendezvous between runs waiting on client tools and the clients that submit results."""

    def __init__(self, board: CallBoard | None = None) -> None:
        self.board = board
        self._waiting: dict[str, dict[str, _Waiter]] = {}
        self._resolved: dict[str, dict[str, Resolution]] = {}

    async def wait(
        self, run_id: str, call_id: str, name: str, args: Mapping[str, Any], timeout_s: float
    ) -> ToolResult:
        """Park until the client submits, the timeout passes or the run is cancelled. Never raises
        for those outcomes; raises ValueError if the same call is already waiting."""
        calls = self._waiting.setdefault(run_id, {})
        if call_id in calls:
            raise ValueError(f"run {run_id!r}: client tool call {call_id!r} is already waiting")
        waiter = _Waiter(PendingToolCall(run_id, call_id, name, dict(args), timeout_s))
        calls[call_id] = waiter
        resolution: Resolution = "cancelled"  # stays so if the waiting task itself is cancelled
        try:
            with anyio.move_on_after(timeout_s):
                if self.board is not None:
                    waiter.result = waiter.result or await self.board.posted(waiter.pending)
                if waiter.result is None:
                    await waiter.done.wait()
            if waiter.result is None and self.board is not None:
                waiter.result = await self.board.settle(run_id, call_id, "timed out")
            if waiter.result is not None:
                if self.board is not None and waiter.result.error_kind != "cancelled":
                    await self.board.settle(run_id, call_id, "submitted")
                return waiter.result
            resolution = "timed out"
            return ToolResult.failure(
                "timeout", f"client tool {name!r} (call {call_id}) got no result within {timeout_s:g}s"
            )
        finally:
            if waiter.result is not None:
                resolution = "cancelled" if waiter.result.error_kind == "cancelled" else "submitted"
            self._forget_waiter(run_id, call_id, resolution)

    def _forget_waiter(self, run_id: str, call_id: str, resolution: Resolution) -> None:
        calls = self._waiting.get(run_id)
        if calls is not None:
            calls.pop(call_id, None)
            if not calls:
                del self._waiting[run_id]
        resolved = self._resolved.setdefault(run_id, {})
        resolved[call_id] = resolution
        while len(resolved) > _MAX_RESOLVED_PER_RUN:
            del resolved[next(iter(resolved))]

    def pending(self, run_id: str) -> list[PendingToolCall]:
        """The run's calls still waiting for a result (submitted ones are gone even before they wake)."""
        return [w.pending for w in self._waiting.get(run_id, {}).values() if w.result is None]

    def waiting_runs(self) -> list[str]:
        """Runs that are `waiting_for_tool` right now."""
        return sorted(r for r in self._waiting if self.is_waiting(r))

    def is_waiting(self, run_id: str) -> bool:
        return any(w.result is None for w in self._waiting.get(run_id, {}).values())

    def submit(self, run_id: str, call_id: str, output: Any, error: str | None = None) -> None:
        """Deliver a client tool's result. `error` (a message) marks the tool as failed."""
        calls = self._waiting.get(run_id, {})
        waiter = calls.get(call_id)
        if waiter is None or waiter.result is not None:
            previous = self._resolved.get(run_id, {}).get(call_id)
            if waiter is not None or previous == "submitted":
                raise DuplicateSubmissionError(f"run {run_id!r}: call {call_id!r} already has a result")
            if previous is not None:
                raise DuplicateSubmissionError(
                    f"run {run_id!r}: call {call_id!r} {previous} before this result arrived"
                )
            pending = sorted(c for c, w in calls.items() if w.result is None)
            if not pending:
                raise UnknownClientCallError(f"run {run_id!r} is not waiting for any client tool")
            raise UnknownClientCallError(
                f"run {run_id!r} has no pending call {call_id!r}; pending: {', '.join(pending)}"
            )
        self.deliver(run_id, call_id, submitted_result(call_id, output, error))

    def deliver(self, run_id: str, call_id: str, result: ToolResult) -> bool:
        """Wake the call's waiter here with `result` (a submission checked by `submit`, or by
        the shared board on any instance); False if it does not wait here or already has one."""
        waiter = self._waiting.get(run_id, {}).get(call_id)
        if waiter is None or waiter.result is not None:
            return False
        waiter.result = result
        waiter.done.set()
        return True

    def cancel_run(self, run_id: str) -> None:
        """Release every waiter of the run with a `cancelled` result and forget the run."""
        for waiter in list(self._waiting.get(run_id, {}).values()):
            if waiter.result is None:
                waiter.result = ToolResult.failure(
                    "cancelled", f"client tool {waiter.pending.name!r}: the run was cancelled"
                )
                waiter.done.set()
        self._resolved.pop(run_id, None)

    def cancel_all(self) -> None:
        for run_id in list(self._waiting):
            self.cancel_run(run_id)


class ClientTool:
    """A tool executed by the client. Registering it tells programs and models it exists."""

    def __init__(
        self,
        name: str,
        *,
        timeout: float = 300.0,
        description: str = "",
        params_schema: dict[str, Any] | None = None,
        expected_latency: float | None = None,
    ) -> None:
        if params_schema is not None and not isinstance(params_schema, dict):
            raise TypeError(f"client tool {name!r}: params_schema must be a JSON Schema object (a dict)")
        self._spec = ToolSpec(
            name=name,
            kind="client",
            pure=False,
            # the wait has no effect here; the client acts once per call id, which is the stable
            # idempotency key: a run resumed after a restart waits again for the same call
            idempotent=True,
            timeout_s=timeout,
            description=description,
            expected_latency_s=expected_latency,
            params_schema=params_schema,
        )

    @property
    def spec(self) -> ToolSpec:
        return self._spec

    def __repr__(self) -> str:
        return f"<ClientTool {self._spec.name!r}>"

    def validate_args(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """Checks the object shape and required names; full JSON Schema checking is the client's."""
        if not isinstance(args, Mapping):
            raise BadToolArgsError(f"arguments must be an object, got {type(args).__name__}")
        schema = self._spec.params_schema or {}
        required = [r for r in schema.get("required", []) if r not in args]
        if required:
            raise BadToolArgsError("missing required argument(s) " + ", ".join(map(repr, required)))
        props = schema.get("properties")
        if isinstance(props, dict) and schema.get("additionalProperties") is False:
            unknown = [k for k in args if k not in props]
            if unknown:
                raise BadToolArgsError("unexpected argument(s) " + ", ".join(map(repr, unknown)))
        return dict(args)

    async def invoke(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        if ctx.client is None:
            return ToolResult.failure(
                "exception", f"client tool {self._spec.name!r}: no ClientToolBroker is configured"
            )
        call_id = ctx.idempotency_key or ctx.call_id
        return await ctx.client.wait(ctx.run_id, call_id, self._spec.name, args, self._spec.timeout_s)
