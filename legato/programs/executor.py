"""The executor: runs many programs (declarative or dynamic agents) concurrently in one process.

```python
async with Executor(PassthroughScheduler(engine), ToolRuntime()) as ex:
    handle = ex.submit(program, {"question": "..."})
    async for event in ex.subscribe(handle.run_id): ...
    result = await handle.wait()
```

Each run is one task in the executor's task group, inside its own cancel scope (`handle.cancel()`).
However a run ends (success, failure, cancellation, executor shutdown), its tool environment is
released under a shielded scope with a timeout, the scheduler gets `RunFinished`, and subscribers
get `run_finished`. `Executor.run(...)` runs one program in the caller's own task instead.

Resuming: a run whose `run_id` already has steps in the journal continues after them (a run
that stopped inside a non-pure tool ends `interrupted` instead, see `graph_run`).
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import TaskGroup

from legato.programs.agent import AgentProgram, AgentTrace
from legato.programs.builder import CompiledProgram
from legato.programs.calls import RunEnv, RunStatus, ToolCaller
from legato.programs.drain import DrainGate
from legato.programs.events import EventHub, Subscription
from legato.programs.graph_run import GraphRun, RunFailed, RunInterrupted
from legato.programs.journal import InMemoryJournalStore, JournalStore, RunJournal, Step, read_steps
from legato.programs.prompt import PromptRenderer
from legato.programs.spec import MapNodeSpec, ProgramSpec, ToolNodeSpec
from legato.programs.speculation import (
    ProgramSpecConfig,
    RunSpeculation,
    SpecCounters,
    TenantToolBudget,
    ToolCallPredictor,
)
from legato.programs.validate import validate
from legato.scheduler.base import CallScheduler
from legato.scheduler.events import RunFinished, RunStarted

log = logging.getLogger(__name__)

Runnable = CompiledProgram | AgentProgram | ProgramSpec


@dataclass
class RunResult:
    run_id: str
    program: str
    status: RunStatus
    output: Any  # declarative: the final state; agent: the function's return value
    error: str | None
    steps: list[Step] = field(default_factory=list)
    trace: AgentTrace | None = None  # dynamic agents: the call structure of this run
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == RunStatus.SUCCEEDED


class RunHandle:
    """A submitted run: its status, its result once finished, and `cancel()`."""

    def __init__(self, run_id: str, program: str, tenant: str) -> None:
        self.run_id = run_id
        self.program = program
        self.tenant = tenant
        self.status = RunStatus.PENDING
        self.result: RunResult | None = None
        self._done = anyio.Event()
        self._scope = anyio.CancelScope()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> None:
        """Cancel the run (also before it started). Idempotent."""
        self._scope.cancel()

    async def wait(self, timeout_s: float | None = None) -> RunResult:
        with anyio.fail_after(timeout_s if timeout_s is not None else math.inf):
            await self._done.wait()
        assert self.result is not None
        return self.result


def _may_use_tools(program: CompiledProgram | AgentProgram) -> bool:
    """Declarative programs say whether they call tools; agents might always."""
    if isinstance(program, AgentProgram):
        return True
    return any(
        isinstance(node, ToolNodeSpec)
        or (isinstance(node, MapNodeSpec) and isinstance(node.body, ToolNodeSpec))
        for node in program.spec.nodes
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


class Executor:
    def __init__(
        self,
        scheduler: CallScheduler,
        tools: ToolCaller | None = None,
        *,
        journal: JournalStore | None = None,
        events: EventHub | None = None,
        tenant: str = "default",
        release_timeout_s: float = 10.0,
        speculation: ProgramSpecConfig | None = None,
    ) -> None:
        """`speculation`: program-level speculation (speculative prefill, early and predicted
        pure tools, see `legato.programs.speculation`); None turns it off."""
        self.scheduler = scheduler
        self.tools = tools
        self.journal: JournalStore = journal if journal is not None else InMemoryJournalStore()
        self.events = events if events is not None else EventHub()
        self.gate = DrainGate()  # `drain()` before stopping: see `legato.programs.drain`
        self.tenant = tenant
        self.release_timeout_s = release_timeout_s
        self.renderer = PromptRenderer(scheduler.tokenizer)
        self._runs: dict[str, RunHandle] = {}
        self._tg: TaskGroup | None = None
        self.speculation = speculation
        self.speculation_counters = SpecCounters()  # summed over finished runs
        self._spec_budget = TenantToolBudget(speculation) if speculation is not None else None
        self._predictors: dict[str, ToolCallPredictor] = {}  # per program (agent) name

    # -- lifecycle --------------------------------------------------------------------------
    async def __aenter__(self) -> Executor:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        """Leaving the block waits for submitted runs (cancel them first to stop early)."""
        assert self._tg is not None
        try:
            return await self._tg.__aexit__(exc_type, exc, tb)
        finally:
            self._tg = None

    def cancel(self, run_id: str) -> bool:
        """Cancel a running run; False when no such run is running."""
        handle = self._runs.get(run_id)
        if handle is None:
            return False
        handle.cancel()
        return True

    def cancel_all(self) -> None:
        for handle in list(self._runs.values()):
            handle.cancel()

    # -- runs -------------------------------------------------------------------------------
    def handle(self, run_id: str) -> RunHandle | None:
        return self._runs.get(run_id)

    def active_runs(self) -> list[RunHandle]:
        return list(self._runs.values())

    def subscribe(self, run_id: str, max_buffer: int = 1024) -> Subscription:
        return self.events.subscribe(run_id, max_buffer)

    def _prepare(
        self, program: Runnable, inputs: Mapping[str, Any] | None, run_id: str | None, tenant: str | None
    ) -> tuple[RunHandle, CompiledProgram | AgentProgram]:
        if isinstance(program, ProgramSpec):
            program = CompiledProgram(program, validate(program, getattr(self.tools, "registry", None)))
        assert isinstance(program, CompiledProgram | AgentProgram)
        if isinstance(program, AgentProgram):
            program.bind_inputs(inputs or {})
        elif not isinstance(program, CompiledProgram):
            raise TypeError(
                f"cannot run {program!r}: expected a compiled program, a ProgramSpec or an @agent"
            )
        run_id = run_id or uuid.uuid4().hex
        if run_id in self._runs:
            raise ValueError(f"run {run_id!r} is already running")
        handle = RunHandle(run_id, program.name, tenant or self.tenant)
        self._runs[run_id] = handle
        return handle, program

    def submit(
        self,
        program: Runnable,
        inputs: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
        tenant: str | None = None,
        timeout_s: float | None = None,
        fresh: bool = False,
    ) -> RunHandle:
        """Start a run in the background (inside `async with executor:`); returns at once.
        `fresh`: the caller knows `run_id` has no journaled steps (a new id): none are read."""
        if self._tg is None:
            raise RuntimeError("submit() needs a running executor: use `async with Executor(...) as ex:`")
        handle, prog = self._prepare(program, inputs, run_id, tenant)
        self._tg.start_soon(
            self._execute, handle, prog, dict(inputs or {}), timeout_s, fresh, name=f"run:{handle.run_id}"
        )
        return handle

    async def run(
        self,
        program: Runnable,
        inputs: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
        tenant: str | None = None,
        timeout_s: float | None = None,
    ) -> RunResult:
        """Run one program to the end in the calling task."""
        handle, prog = self._prepare(program, inputs, run_id, tenant)
        await self._execute(handle, prog, dict(inputs or {}), timeout_s, fresh=False)
        assert handle.result is not None
        return handle.result

    # -- one run ----------------------------------------------------------------------------
    def _set_status(self, handle: RunHandle, status: RunStatus) -> None:
        if handle.status != status:
            handle.status = status
            self.events.publish(handle.run_id, "status", status=status.value)

    def _run_speculation(self, env: RunEnv) -> RunSpeculation | None:
        if self.speculation is None or self._spec_budget is None:
            return None
        return RunSpeculation(
            self.speculation,
            self._spec_budget,
            self.tools,
            env.tool_is_pure,
            run_id=env.run_id,
            tenant=env.tenant,
            predictor=self._predictors.setdefault(env.program, ToolCallPredictor()),
        )

    def _add_counters(self, spec: RunSpeculation) -> None:
        total, run = self.speculation_counters, spec.counters
        total.prefills += run.prefills
        total.tools_started += run.tools_started
        total.tools_used += run.tools_used
        total.tools_discarded += run.tools_discarded

    async def _execute(
        self,
        handle: RunHandle,
        program: CompiledProgram | AgentProgram,
        inputs: dict[str, Any],
        timeout_s: float | None,
        fresh: bool,
    ) -> None:
        run_id = handle.run_id
        journal = RunJournal(self.journal, run_id, fresh=fresh)
        env = RunEnv(
            run_id=run_id,
            tenant=handle.tenant,
            program=handle.program,
            scheduler=self.scheduler,
            renderer=self.renderer,
            hub=self.events,
            journal=journal,
            tools=self.tools,
            set_status=lambda s: self._set_status(handle, s),
            gate=self.gate,
        )
        env.speculation = self._run_speculation(env)
        started = time.monotonic()
        status, output = RunStatus.CANCELLED, None
        error: str | None = "cancelled"
        agent_run = None
        graph = program.graph if isinstance(program, CompiledProgram) else None
        self.scheduler.notify(RunStarted(run_id, handle.program, handle.tenant, graph))
        self.events.publish(run_id, "run_started", program=handle.program)
        try:
            with handle._scope:
                self._set_status(handle, RunStatus.RUNNING)
                journaled = await read_steps(journal, run_id)
                with anyio.move_on_after(timeout_s if timeout_s is not None else math.inf) as deadline:
                    if self.tools is not None and _may_use_tools(program):
                        await self.tools.prepare_run(run_id)  # prepared in the background
                    async with env.speculation or nullcontext():
                        if isinstance(program, CompiledProgram):
                            graph_run = GraphRun(env, program.graph, program.python_routers)
                            output = await graph_run.run(inputs, journaled)
                        else:
                            agent_run = program.new_run(env, journaled)
                            output = await program.execute(agent_run, inputs)
                    status, error = RunStatus.SUCCEEDED, None
                if deadline.cancelled_caught:
                    status, error = RunStatus.FAILED, f"run timed out after {timeout_s:g} s"
        except RunInterrupted as exc:
            status, error = RunStatus.INTERRUPTED, exc.message
        except RunFailed as exc:
            status, error = RunStatus.FAILED, exc.message
        except Exception as exc:
            status, error = RunStatus.FAILED, _describe(exc)
            if not isinstance(program, AgentProgram):
                log.exception("run %s of %s failed with an internal error", run_id, handle.program)
        finally:
            with anyio.CancelScope(shield=True):
                if self.tools is not None:
                    with anyio.move_on_after(self.release_timeout_s):
                        await self.tools.release_run(run_id)
                try:  # finished steps (not the markers journaled before impure tools)
                    steps = [s for s in await read_steps(journal, run_id) if s.status != "started"]
                except Exception:  # the result must still be delivered
                    steps = []
                handle.result = RunResult(
                    run_id=run_id,
                    program=handle.program,
                    status=status,
                    output=output,
                    error=error,
                    steps=steps,
                    trace=agent_run.trace if agent_run is not None else None,
                    duration_s=time.monotonic() - started,
                )
                self._set_status(handle, status)
                if env.speculation is not None:
                    self._add_counters(env.speculation)
                self.scheduler.notify(RunFinished(run_id, status.value))
                self.events.publish(run_id, "run_finished", status=status.value, error=error)
                self._runs.pop(run_id, None)
                handle._done.set()
