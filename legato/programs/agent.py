"""Dynamic agents: `@legato.agent async def f(ctx, ...)` with `await ctx.llm(...)`,
`await ctx.tool(...)` and parallel forks.

A dynamic agent has no declared graph, so Legato learns its structure online: every run records
a trace of its calls (call site, path in the fork tree, prompt and shared-prefix lengths, prefix
part names, tool names, timings). `AgentHistory` keeps recent traces per agent and predicts, for a
call site, which tool usually follows and how long it takes: the hint the scheduler needs to keep
the agent's prefix warm through the tool call.

Journaling: each call has a deterministic key, its position in the fork tree (`"3"`, or
`"2.b1.0"` for the first call of branch 1 of the fork made as call 2). A resumed run gets the
journaled results back for the keys it already finished, so a deterministic agent resumes
without redoing work.
"""

from __future__ import annotations

import inspect
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Generic, TypeVar

import anyio
from anyio.abc import TaskGroup

from legato.engine_adapter.base import SamplingParams
from legato.programs.agent_history import AgentHistory, AgentTrace, NextCallPrediction, TraceEvent
from legato.programs.calls import RunEnv, StepError, call_llm, call_tool, warm_prompt, with_retries
from legato.programs.journal import Step, append_step
from legato.programs.output import extract_json
from legato.programs.prompt import PrefixPart, RenderedPrompt
from legato.scheduler.events import CallHints

T = TypeVar("T")


__all__ = [
    "AgentContext",
    "AgentHistory",
    "AgentProgram",
    "AgentTrace",
    "Branch",
    "Fork",
    "LLMCallError",
    "NextCallPrediction",
    "ToolCallError",
    "TraceEvent",
    "agent",
]


class ToolCallError(Exception):
    """`ctx.tool(...)` failed (timeout, killed, exception, bad args). Catch it to recover."""

    def __init__(self, tool: str, message: str, kind: str) -> None:
        super().__init__(message)
        self.tool = tool
        self.kind = kind


class LLMCallError(Exception):
    """`ctx.llm(...)` failed after its retries (engine error, timeout)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


# --- the agent context -------------------------------------------------------------------------------


class _AgentRun:
    """State shared by all contexts (branches) of one agent run."""

    def __init__(self, agent: AgentProgram, env: RunEnv, journaled: Sequence[Step]) -> None:
        self.agent = agent
        self.env = env
        self.t0 = time.monotonic()
        self.trace = AgentTrace(env.run_id, agent.name, time.time())
        self.replay = {s.key: s for s in journaled if s.status == "ok"}
        self.index = len(journaled)
        self.lock = anyio.Lock()

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def journal(self, key: str, site: str, result: Any, started: float) -> None:
        async with self.lock:
            step = Step(
                self.index, key, site, "ok", result=result, started_at=started, finished_at=time.time()
            )
            self.index += 1
            await append_step(self.env.journal, self.env.run_id, step)


def _caller_site() -> str | None:
    """`function:line` of the agent code that made the call, skipping this module's frames;
    None when the caller is not on the stack (a lambda handed to `gather` returns a coroutine
    that the fork's task awaits)."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None or "anyio" in frame.f_code.co_filename or "asyncio" in frame.f_code.co_filename:
        return None
    return f"{frame.f_code.co_name}:{frame.f_lineno}"


class AgentContext:
    """Handed to an agent function as its first argument (and to each fork branch)."""

    def __init__(self, run: _AgentRun, path: str = "", origin: str = "") -> None:
        self._run = run
        self._path = path
        self._origin = origin  # the branch function's name, for call sites found no other way
        self._counter = 0

    @property
    def run_id(self) -> str:
        return self._run.env.run_id

    @property
    def tenant(self) -> str:
        return self._run.env.tenant

    @property
    def trace(self) -> AgentTrace:
        return self._run.trace

    def _site(self, label: str | None, kind: str) -> str:
        return label or _caller_site() or f"{self._origin or 'agent'}:{kind}#{self._counter}"

    def _next_key(self) -> str:
        key = f"{self._path}{self._counter}"
        self._counter += 1
        return key

    def _render(self, prompt: Sequence[str | PrefixPart]) -> RenderedPrompt:
        """Leading `PrefixPart`s are the shared prefix; the rest is this call's own text."""
        split = next((i for i, p in enumerate(prompt) if not isinstance(p, PrefixPart)), len(prompt))
        parts = [p for p in prompt[:split] if isinstance(p, PrefixPart)]
        dynamic = [p.text if isinstance(p, PrefixPart) else p for p in prompt[split:]]
        return self._run.env.renderer.render(parts, dynamic)

    async def llm(
        self,
        *prompt: str | PrefixPart,
        label: str | None = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
        next_tool: str | None = None,
        timeout_s: float | None = None,
        retries: int = 0,
        tool_call: Callable[[str], tuple[str, Mapping[str, Any]] | None] | None = None,
    ) -> str:
        """Generate text. Leading `PrefixPart`s are the shared prefix (tokenized once, reused
        across calls and runs); plain strings are this call's own text. `tool_call` parses the
        reply streamed so far into the tool call it decides (or None yet): with speculation on,
        a pure tool starts as soon as it parses (early tool start), kept only if the tool the
        agent then calls is exactly the same."""
        site = self._site(label, "llm")
        run, env = self._run, self._run.env
        key = self._next_key()
        rendered = self._render(prompt)
        started, wall = run.now(), time.time()
        if key in run.replay:
            result = run.replay[key].result
            run.trace.events.append(
                TraceEvent("llm", site, key, started, started, len(rendered.token_ids),
                           rendered.shared_prefix_tokens, rendered.parts, replayed=True)
            )  # fmt: skip
            return str(result)
        predicted = run.agent.history.predict_next(site) if next_tool is None else None
        tool_next = next_tool or (predicted.tool if predicted and predicted.kind == "tool" else None)
        expected = env.expected_tool_latency(tool_next) if tool_next else None
        if tool_next and expected is None and predicted is not None:
            expected = predicted.expected_latency_s
        hints = CallHints(
            next_tool=tool_next,
            expected_tool_latency_s=expected,
            is_last_step=bool(predicted and predicted.kind == "end" and predicted.probability >= 0.99),
        )
        sampling = SamplingParams(
            max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, stop=tuple(stop)
        )
        env.hub.publish(env.run_id, "node_started", site, path=key)
        watch = _early_start(env, tool_call)
        try:
            out, _ = await with_retries(
                lambda: call_llm(env, site, rendered, sampling, hints, watch),
                what=f"LLM call {site!r}",
                retries=retries,
                timeout_s=timeout_s,
            )
        except StepError as exc:
            env.hub.publish(env.run_id, "node_finished", site, path=key, status="failed", error=exc.message)
            raise LLMCallError(exc.message, exc.kind) from None
        run.trace.events.append(
            TraceEvent("llm", site, key, started, run.now(), len(rendered.token_ids),
                       rendered.shared_prefix_tokens, rendered.parts, out.output_tokens)
        )  # fmt: skip
        await run.journal(key, site, out.text, wall)
        env.hub.publish(env.run_id, "node_finished", site, path=key, status="ok")
        return out.text

    def warm(self, *prompt: str | PrefixPart, label: str | None = None) -> bool:
        """Speculative prefill: the next `llm(...)` call's prompt will start with `prompt`. Call it
        just before a tool call: with speculation on, it is prefilled while the tool runs, so the
        KV is warm when the tool returns. Returns at once; False when speculation is off."""
        return warm_prompt(self._run.env, self._site(label, "llm"), self._render(prompt))

    async def llm_json(self, *prompt: str | PrefixPart, default: Any = None, **kwargs: Any) -> Any:
        """`llm(...)` then the first JSON object/array in the text, or `default` when none parses."""
        kwargs.setdefault("label", self._site(None, "llm"))
        text = await self.llm(*prompt, **kwargs)
        try:
            return extract_json(text)
        except ValueError:
            return default

    async def tool(
        self,
        name: str,
        args: Mapping[str, Any] | None = None,
        /,
        *,
        label: str | None = None,
        timeout_s: float | None = None,
        retries: int = 0,
        **kwargs: Any,
    ) -> Any:
        """Call a registered tool; returns its output or raises `ToolCallError` (readable
        message, `kind` one of timeout / killed / exception / limit / bad_args / ...)."""
        site = label or f"tool:{name}"
        run, env = self._run, self._run.env
        key = self._next_key()
        call_args = {**(args or {}), **kwargs}
        started, wall = run.now(), time.time()
        if key in run.replay:
            run.trace.events.append(TraceEvent("tool", site, key, started, started, tool=name, replayed=True))
            return run.replay[key].result

        tries = 0

        async def attempt() -> Any:
            nonlocal tries
            tries += 1  # the call path is stable across resumes: so is `run:path:attempt`
            result = await call_tool(env, site, name, call_args, f"{env.run_id}:{key}:{tries}")
            if not result.ok:
                raise StepError(
                    f"tool {name!r} failed [{result.error_kind}]: {result.error}", result.error_kind or ""
                )
            return result.output

        try:
            output, _ = await with_retries(
                attempt, what=f"tool {name!r}", retries=retries, timeout_s=timeout_s
            )
        except StepError as exc:
            run.trace.events.append(TraceEvent("tool", site, key, started, run.now(), tool=name, ok=False))
            raise ToolCallError(name, exc.message, exc.kind) from None
        run.trace.events.append(TraceEvent("tool", site, key, started, run.now(), tool=name))
        await run.journal(key, site, output, wall)
        return output

    def fork(self) -> Fork:
        """`async with ctx.fork() as f: a = f.spawn(work, x); ...` then `a.result`. Branches run
        concurrently; the block exits when all are done (a failure cancels the others)."""
        return Fork(self)

    async def gather(self, *branches: Callable[[AgentContext], Awaitable[T]]) -> list[T]:
        """Run `branches` (each `async def b(ctx) -> T`) in parallel; results in order. The first
        failure is raised as itself (the other branches are cancelled)."""
        handles: list[Branch[T]] = []
        try:
            async with self.fork() as f:
                handles = [f.spawn(b) for b in branches]
        except BaseExceptionGroup as group:
            raise _first_leaf(group) from None
        return [h.result for h in handles]


def _early_start(
    env: RunEnv, parse: Callable[[str], tuple[str, Mapping[str, Any]] | None] | None
) -> Callable[[str], None] | None:
    spec = env.speculation
    if parse is None or spec is None or not spec.config.early_tools:
        return None

    def watch(text: str) -> None:
        call = parse(text)
        if call is not None:
            spec.start_tool(call[0], call[1])

    return watch


def _first_leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


_UNSET: Any = object()


class Branch(Generic[T]):
    def __init__(self) -> None:
        self._value: Any = _UNSET

    @property
    def done(self) -> bool:
        return self._value is not _UNSET

    @property
    def result(self) -> T:
        if self._value is _UNSET:
            raise RuntimeError("branch has not finished (read .result after the fork block)")
        return self._value  # type: ignore[no-any-return]


class Fork:
    def __init__(self, parent: AgentContext) -> None:
        self._parent = parent
        self._key = ""
        self._branches = 0
        self._tg: TaskGroup | None = None
        self._started = 0.0

    async def __aenter__(self) -> Fork:
        self._key = self._parent._next_key()
        self._started = self._parent._run.now()
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    def spawn(self, fn: Callable[..., Awaitable[T]], *args: Any) -> Branch[T]:
        if self._tg is None:
            raise RuntimeError("spawn() is only valid inside `async with ctx.fork() as f:`")
        branch: Branch[T] = Branch()
        origin = getattr(fn, "__qualname__", "branch")
        ctx = AgentContext(self._parent._run, f"{self._key}.b{self._branches}.", origin)
        self._branches += 1

        async def run() -> None:
            branch._value = await fn(ctx, *args)

        self._tg.start_soon(run)
        return branch

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._tg is not None
        try:
            return await self._tg.__aexit__(exc_type, exc, tb)
        finally:
            run = self._parent._run
            run.trace.events.append(
                TraceEvent(
                    "fork", f"fork:{self._key}", self._key, self._started, run.now(), branches=self._branches
                )
            )


# --- the decorator -------------------------------------------------------------------------------------


class AgentProgram:
    """An agent function plus its learned history. Run it with `Executor.run(agent, inputs)`."""

    def __init__(
        self, fn: Callable[..., Awaitable[Any]], name: str | None = None, history_runs: int = 256
    ) -> None:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"@agent needs an `async def` function, got {fn!r}")
        self.fn = fn
        self.name = name or fn.__name__
        self.history = AgentHistory(history_runs)
        self.__doc__ = fn.__doc__
        self._signature = inspect.signature(fn)

    def bind_inputs(self, inputs: Mapping[str, Any]) -> None:
        """Raise a TypeError naming the bad input when `inputs` do not fit the function."""
        try:
            self._signature.bind(None, **inputs)
        except TypeError as exc:
            raise TypeError(
                f"inputs for agent {self.name!r} do not fit {self.name}{self._signature}: {exc}"
            ) from None

    def new_run(self, env: RunEnv, journaled: Sequence[Step]) -> _AgentRun:
        return _AgentRun(self, env, journaled)

    async def execute(self, run: _AgentRun, inputs: Mapping[str, Any]) -> Any:
        """Run the function; the run's trace is recorded in `history` however it ends."""
        status = "cancelled"
        try:
            result = await self.fn(AgentContext(run), **inputs)
            status = "succeeded"
            return result
        except Exception:
            status = "failed"
            raise
        finally:
            run.trace.status = status
            run.trace.duration_s = run.now()
            self.history.record(run.trace)

    def __repr__(self) -> str:
        return f"<agent {self.name}>"


def agent(
    fn: Callable[..., Awaitable[Any]] | None = None, *, name: str | None = None, history_runs: int = 256
) -> Any:
    """Decorator: `@agent` or `@agent(name="coder")` on `async def f(ctx, **inputs)`."""
    if fn is not None:
        return AgentProgram(fn, name, history_runs)

    def wrap(f: Callable[..., Awaitable[Any]]) -> AgentProgram:
        return AgentProgram(f, name, history_runs)

    return wrap
