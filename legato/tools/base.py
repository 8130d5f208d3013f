"""The shared vocabulary of `legato.tools`: what a tool is, what it is called with, what it returns.

Every tool kind (async Python function, sandboxed subprocess, client-side tool) is described by one
`ToolSpec` and answers with one `ToolResult`. The executor and the scheduler only ever see these two,
so a tool failure is *data* (a result with ``ok=False`` and a readable error) and never an exception
that tears down a run: the program decides what to do with it (error route, retry, fail).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias, runtime_checkable

if TYPE_CHECKING:
    from legato.tools.process import ProcessGroups

ToolKind: TypeAlias = Literal["python", "subprocess", "client"]
ErrorKind: TypeAlias = Literal["timeout", "killed", "exception", "limit", "cancelled", "bad_args"]
JSONValue: TypeAlias = str | int | float | bool | dict[str, Any] | list[Any] | None

# Same alphabet as OpenAI function names, plus '.', so tool names survive the OpenAI-compatible proxy.
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def check_tool_name(name: str) -> str:
    """Return `name` if it is a usable tool name, else raise a ValueError saying what is allowed."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"invalid tool name {name!r}: use 1-64 characters from letters, digits, '_', '-' and '.'"
        )
    return name


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """What the executor and the scheduler know about a tool before running it.

    `pure` tools have no side effects (same args, same output), which makes them safe to run
    speculatively or to retry. `idempotent` tools have side effects but apply them at most once
    per `ToolContext.idempotency_key`: a run stopped while one ran (a crash) runs it again with
    the same key instead of ending `interrupted`. `expected_latency_s` is the author's prior;
    measured latencies (`ToolLatencyStats`) replace it once the tool has run.
    """

    name: str
    kind: ToolKind
    pure: bool
    timeout_s: float
    description: str = ""
    expected_latency_s: float | None = None
    params_schema: dict[str, Any] | None = None
    idempotent: bool = False

    @property
    def rerunnable(self) -> bool:
        """Safe to run again after a crash stopped it mid-flight (pure, or idempotent by key)."""
        return self.pure or self.idempotent

    def __post_init__(self) -> None:
        check_tool_name(self.name)
        if self.kind not in ("python", "subprocess", "client"):
            raise ValueError(f"tool {self.name!r}: kind must be 'python', 'subprocess' or 'client'")
        if not (isinstance(self.timeout_s, int | float) and math.isfinite(self.timeout_s)) or (
            self.timeout_s <= 0
        ):
            raise ValueError(f"tool {self.name!r}: timeout must be a positive number of seconds")
        if self.expected_latency_s is not None and not (
            math.isfinite(self.expected_latency_s) and self.expected_latency_s >= 0
        ):
            raise ValueError(f"tool {self.name!r}: expected_latency_s must be a non-negative number")


@dataclass(frozen=True, slots=True)
class ToolResult:
    """The outcome of one tool call. `output` is always JSON-serialisable.

    ``ok=False`` means the tool did not produce a usable result; `error` is a one-line message fit to
    show to a model or a client (no tracebacks), `error_kind` says why in machine-readable form.
    """

    ok: bool
    output: JSONValue
    error: str | None = None
    error_kind: ErrorKind | None = None
    duration_s: float = 0.0

    @classmethod
    def failure(cls, kind: ErrorKind, error: str, output: JSONValue = None) -> ToolResult:
        return cls(ok=False, output=output, error=error, error_kind=kind)


class ToolBroker(Protocol):
    """Where client-side tools wait for the client's answer (`legato.tools.client.ClientToolBroker`)."""

    async def wait(
        self, run_id: str, call_id: str, name: str, args: Mapping[str, Any], timeout_s: float
    ) -> ToolResult: ...


@dataclass(frozen=True, slots=True)
class ToolContext:
    """Per-call context handed to a tool: who is calling and where it may work.

    A Python tool receives it when its first parameter is annotated `ToolContext`. `processes`
    tracks the process groups the run has alive so that releasing the run kills them; `client`
    is the broker that client-side tools wait on. `idempotency_key` is the same for every
    execution of one attempt of one step of a run, across crashes and restarts (run id, step,
    map item, attempt): an `idempotent` tool passes it on to whatever applies its effect (an API's
    Idempotency-Key header, a unique database key) so a re-run after a crash is applied once.
    """

    run_id: str
    call_id: str
    tenant: str
    workdir: Path
    idempotency_key: str = ""
    processes: ProcessGroups | None = field(default=None, compare=False)
    client: ToolBroker | None = field(default=None, compare=False)


class BadToolArgsError(ValueError):
    """Arguments that do not fit a tool's parameters; becomes a ``bad_args`` result."""


class UnknownToolError(KeyError):
    """A tool name that is not registered. The message lists the known names."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        self.known = sorted(known)
        listing = ", ".join(repr(n) for n in self.known) if self.known else "none registered"
        self.message = f"unknown tool {name!r}; known tools: {listing}"
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would print the message quoted, as a repr.
        return self.message


@runtime_checkable
class Tool(Protocol):
    """Anything the registry can hold and the runtime can run."""

    @property
    def spec(self) -> ToolSpec: ...

    def validate_args(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """Return the arguments to invoke with; raise `BadToolArgsError` naming what is wrong."""
        ...

    async def invoke(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        """Run the tool on validated args. Tool failures come back as results, never raised."""
        ...
