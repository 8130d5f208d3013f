"""One LLM call and one tool call, as both program styles (graphs and dynamic agents) make them.

This is the only place a program touches the outside world: LLM calls go to the `CallScheduler`
(never to an engine directly), tool calls to the tool runtime, and both report to the scheduler
(`ToolStarted` / `ToolFinished`) and to the run's event stream. Retries and per-attempt timeouts
live here too, so both styles behave the same way.
"""

from __future__ import annotations

import enum
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import anyio

from legato.engine_adapter.base import PREFILL_ONLY, EngineError, SamplingParams
from legato.programs.drain import DrainGate
from legato.programs.events import EventHub
from legato.programs.journal import JournalStore
from legato.programs.prompt import PromptRenderer, RenderedPrompt
from legato.programs.speculation import RunSpeculation
from legato.scheduler.base import CallScheduler
from legato.scheduler.events import CallHints, LLMCall, ToolFinished, ToolStarted
from legato.tools.base import ToolResult, UnknownToolError

T = TypeVar("T")


class RunStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    WAITING_FOR_TOOL = "waiting_for_tool"  # a client-side tool: the run waits for its result
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # a resumed run found a non-pure tool that was mid-flight when the process stopped: it is not
    # run again (it may or may not have taken effect), so the run ends here
    INTERRUPTED = "interrupted"

    @property
    def finished(self) -> bool:
        return self in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.INTERRUPTED)


class ToolCaller(Protocol):
    """What the executor needs of `legato.tools.runtime.ToolRuntime`."""

    async def call(
        self,
        name: str,
        args: dict[str, Any],
        *,
        run_id: str,
        call_id: str,
        tenant: str,
        idempotency_key: str | None = None,
    ) -> ToolResult: ...

    async def prepare_run(self, run_id: str) -> None: ...

    async def release_run(self, run_id: str) -> None: ...


class StepError(Exception):
    """A step failed in a way the program handles (error route) or reports (run failed)."""

    def __init__(self, message: str, kind: str = "exception") -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind


@dataclass(frozen=True, slots=True)
class LLMOutput:
    text: str
    output_tokens: int
    prompt_tokens: int
    cached_tokens: int
    finish_reason: str


@dataclass
class RunEnv:
    """Everything one run's steps need; created by the executor per run."""

    run_id: str
    tenant: str
    program: str
    scheduler: CallScheduler
    renderer: PromptRenderer
    hub: EventHub
    journal: JournalStore
    tools: ToolCaller | None
    set_status: Callable[[RunStatus], None]
    speculation: RunSpeculation | None = None  # program-level speculation, when the executor has it on
    _calls: itertools.count[int] = field(default_factory=itertools.count)
    gate: DrainGate = field(default_factory=DrainGate)  # the executor's: holds steps while draining

    def call_id(self, node: str) -> str:
        return f"{self.run_id}:{node}:{next(self._calls)}"

    # -- tool metadata (optional features of the tool runtime) ------------------------------
    def tool_spec(self, name: str) -> Any:
        """The tool's `ToolSpec`, None if the runtime has no registry or does not know it."""
        registry = getattr(self.tools, "registry", None)
        try:
            return registry.spec(name) if registry is not None else None
        except (KeyError, AttributeError):
            return None

    def tool_kind(self, name: str) -> str | None:
        spec = self.tool_spec(name)
        return str(spec.kind) if spec is not None else None

    def tool_rerunnable(self, name: str) -> bool:
        """Pure or idempotent: safe to run again after a stop mid-flight (unknown tools: not)."""
        spec = self.tool_spec(name)
        return spec is not None and bool(spec.pure or getattr(spec, "idempotent", False))

    def tool_is_pure(self, name: str) -> bool:
        """Only a registered, server-side `pure` tool may run speculatively."""
        spec = self.tool_spec(name)
        return spec is not None and bool(spec.pure) and spec.kind != "client"

    def expected_tool_latency(self, name: str) -> float | None:
        stats = getattr(self.tools, "stats", None)
        try:
            value = stats.expected_latency(name, tenant=self.tenant) if stats is not None else None
        except (KeyError, AttributeError, TypeError):
            return None
        return float(value) if value is not None else None


@asynccontextmanager
async def closing(stream: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """Close an async generator however the loop over it ends, so a cancelled run stops its
    engine request promptly (plain async iterators without `aclose` are left alone)."""
    try:
        yield stream
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


async def call_llm(
    env: RunEnv,
    node: str,
    prompt: RenderedPrompt,
    sampling: SamplingParams,
    hints: CallHints,
    watch: Callable[[str], None] | None = None,
) -> LLMOutput:
    """Run one LLM call; `watch` sees the text streamed so far after every chunk (early tool
    start). With speculation on, the run's predicted next tool starts as the call does."""
    if env.speculation is not None:
        env.speculation.call_started()
    call = LLMCall(
        call_id=env.call_id(node),
        run_id=env.run_id,
        program=env.program,
        node=node,
        tenant=env.tenant,
        prompt_token_ids=prompt.token_ids,
        sampling=sampling,
        shared_prefix_tokens=prompt.shared_prefix_tokens,
        hints=hints,
    )
    texts: list[str] = []
    so_far = ""
    n_out = prompt_tokens = cached = 0
    finish = "abort"
    publish = env.hub.has_subscribers(env.run_id)
    try:
        async with env.gate.step(waits=True), closing(env.scheduler.generate(call)) as stream:
            async for chunk in stream:
                texts.append(chunk.text)
                n_out += len(chunk.token_ids)
                prompt_tokens = chunk.prompt_tokens or prompt_tokens
                cached = chunk.cached_tokens or cached
                if publish and chunk.text:
                    env.hub.publish(env.run_id, "token", node, text=chunk.text)
                if watch is not None and chunk.text:
                    so_far += chunk.text
                    watch(so_far)
                if chunk.finished:
                    finish = chunk.finish_reason or "stop"
    except EngineError as exc:
        raise StepError(f"LLM call of node {node!r} failed: {exc}", "engine") from exc
    except Exception as exc:  # a broken engine or scheduler: the step fails, the run decides
        raise StepError(f"LLM call of node {node!r} failed: {type(exc).__name__}: {exc}", "engine") from exc
    if finish == "abort":
        raise StepError(f"LLM call of node {node!r} was aborted by the engine", "engine")
    return LLMOutput("".join(texts), n_out, prompt_tokens, cached, finish)


def warm_prompt(env: RunEnv, node: str, prompt: RenderedPrompt) -> bool:
    """Speculative prefill: the known prefix of a later call of `node` goes to the scheduler as a
    prefill-only call while the run waits on its next tool; False when speculation is off."""
    spec = env.speculation
    if spec is None or not prompt.token_ids:
        return False
    call = LLMCall(
        call_id=env.call_id(f"{node}:prefill"),
        run_id=env.run_id,
        program=env.program,
        node=node,
        tenant=env.tenant,
        prompt_token_ids=prompt.token_ids,
        sampling=PREFILL_ONLY,
        shared_prefix_tokens=prompt.shared_prefix_tokens,
        hints=CallHints(prefill_only=True),
    )

    async def warm() -> None:
        async with closing(env.scheduler.generate(call)) as stream:
            async for _ in stream:
                pass

    return spec.start_prefill(warm)


async def _run_tool(env: RunEnv, node: str, tool: str, args: dict[str, Any], key: str | None) -> ToolResult:
    """The tool runtime's answer, or the run's speculative result of exactly this call."""
    assert env.tools is not None
    spec = env.speculation
    if spec is None:
        return await env.tools.call(
            tool, args, run_id=env.run_id, call_id=env.call_id(node), tenant=env.tenant, idempotency_key=key
        )
    result = await spec.take(tool, args)
    if result is not None:
        return result
    pure = env.tool_is_pure(tool)
    try:
        return await env.tools.call(
            tool, args, run_id=env.run_id, call_id=env.call_id(node), tenant=env.tenant, idempotency_key=key
        )
    finally:
        if not pure:
            spec.impure()


async def call_tool(
    env: RunEnv, node: str, tool: str, args: dict[str, Any], key: str | None = None
) -> ToolResult:
    """Run one tool call; `key` is its idempotency key (stable across restarts, see `ToolContext`)."""
    if env.tools is None:
        raise StepError(f"node {node!r} calls tool {tool!r} but the executor has no tool runtime", "config")
    async with env.gate.step(waits=not env.tool_rerunnable(tool)):
        return await _call_tool(env, node, tool, args, key)


async def _call_tool(env: RunEnv, node: str, tool: str, args: dict[str, Any], key: str | None) -> ToolResult:
    assert env.tools is not None
    expected = env.expected_tool_latency(tool)
    waits_for_client = env.tool_kind(tool) == "client"
    env.scheduler.notify(ToolStarted(env.run_id, tool, expected))
    env.hub.publish(env.run_id, "tool_started", node, tool=tool, args=args)
    started = time.monotonic()
    if waits_for_client:
        env.set_status(RunStatus.WAITING_FOR_TOOL)
    result: ToolResult | None = None
    try:
        result = await _run_tool(env, node, tool, args, key)
    except UnknownToolError as exc:
        raise StepError(f"node {node!r}: {exc}", "unknown_tool") from exc
    finally:
        if waits_for_client:
            env.set_status(RunStatus.RUNNING)
        duration = result.duration_s if result is not None else time.monotonic() - started
        env.scheduler.notify(ToolFinished(env.run_id, tool, duration, ok=result is not None and result.ok))
    env.hub.publish(
        env.run_id, "tool_output", node, tool=tool, ok=result.ok, output=result.output, error=result.error
    )
    return result


def tool_error(node: str, tool: str, result: ToolResult) -> StepError:
    kind = result.error_kind or "exception"
    return StepError(f"tool {tool!r} (node {node!r}) failed [{kind}]: {result.error}", kind)


async def with_retries(
    attempt: Callable[[], Awaitable[T]],
    *,
    what: str,
    retries: int = 0,
    backoff_s: float = 0.05,
    timeout_s: float | None = None,
) -> tuple[T, int]:
    """Run `attempt` up to `retries + 1` times, each under `timeout_s`, sleeping `backoff_s`,
    then twice that, ... between attempts. Raises the last `StepError` (timeouts become one)."""
    last: StepError | None = None
    for n in range(retries + 1):
        if n:
            await anyio.sleep(backoff_s * 2 ** (n - 1))
        try:
            if timeout_s is None:
                return await attempt(), n + 1
            with anyio.fail_after(timeout_s):
                return await attempt(), n + 1
        except TimeoutError:
            last = StepError(f"{what} timed out after {timeout_s:g} s (attempt {n + 1})", "timeout")
        except StepError as exc:
            last = exc
    assert last is not None
    if retries:
        last.message = f"{last.message} (after {retries + 1} attempts)"
        last.args = (last.message,)
    raise last


def scope_view(state: Mapping[str, Any], local: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if not local:
        return state
    return {**state, **local}
