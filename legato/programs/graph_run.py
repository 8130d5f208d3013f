"""Walking a declarative program: one node at a time, journaling each step before the next.

The walk is sequential (a map node is where work runs in parallel). For each node: check its
loop bound, run it (with retries and a per-attempt timeout), fold its writes into state, pick the
next node (edge, router, error route), append the step to the journal, then move on. Resuming a
run replays the journaled writes through the same reducers and continues where it stopped.
A map node is one step: its items all finish (or the step fails) before it is journaled, so a
run interrupted inside a map redoes that map.

Tools with side effects: before a tool node (or a map over a tool) whose tool is not declared
`pure` runs, a `started` marker is journaled. A resumed run whose journal ends in such a marker
was stopped while the tool ran: re-running it could apply its effect twice, so the run ends
`interrupted` (`RunInterrupted`) unless the tool is (now) pure or idempotent, in which case it runs
again. Every tool call gets an idempotency key `run:step:item:attempt` (`ToolContext`): the step is
the marker's index, reused by the re-run, so an idempotent tool sees the same key again.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import anyio

from legato.engine_adapter.base import SamplingParams
from legato.programs.calls import (
    RunEnv,
    StepError,
    call_llm,
    call_tool,
    scope_view,
    tool_error,
    warm_prompt,
    with_retries,
)
from legato.programs.graph_prefill import known_prompt
from legato.programs.journal import Step, StepStatus, append_step
from legato.programs.model import ProgramGraph
from legato.programs.output import parse_output
from legato.programs.routing import route
from legato.programs.spec import END, LLMNodeSpec, MapNodeSpec, NodeSpec, ToolNodeSpec, VarArg
from legato.programs.state import State, StateError, lookup_path
from legato.scheduler.events import CallHints

PythonRouter = Callable[[dict[str, Any]], str]

MAX_STEPS_PER_RUN = 100_000  # a backstop; validated programs terminate long before


class RunFailed(Exception):
    """The run failed at a step with no error route; `step` is the journaled failure."""

    def __init__(self, message: str, step: Step | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.step = step


class RunInterrupted(RunFailed):
    """A resumed run stopped at a non-pure tool that was mid-flight when the process stopped."""


def node_tool(node: NodeSpec) -> str | None:
    """The tool a node runs (directly or as a map body), else None."""
    if isinstance(node, ToolNodeSpec):
        return node.tool
    if isinstance(node, MapNodeSpec) and isinstance(node.body, ToolNodeSpec):
        return node.body.tool
    return None


class GraphRun:
    def __init__(self, env: RunEnv, graph: ProgramGraph, python_routers: Mapping[str, PythonRouter]) -> None:
        self.env = env
        self.graph = graph
        self.spec = graph.spec
        self.python_routers = python_routers
        self.state = State(self.spec.state)
        self.visits: Counter[str] = Counter()
        self._resume_marker: Step | None = None  # a re-runnable tool's marker the journal ends in
        self._step_index = 0  # the index keying the current step's tool calls
        self._attempts: Counter[tuple[int, int | None]] = Counter()

    # -- one node ---------------------------------------------------------------------------
    def _sampling(self, node: LLMNodeSpec) -> SamplingParams:
        return SamplingParams(
            max_tokens=node.max_tokens,
            temperature=node.temperature,
            top_p=node.top_p,
            seed=node.seed,
            stop=tuple(node.stop),
        )

    async def _llm(self, node: LLMNodeSpec, label: str, scope: Mapping[str, Any]) -> Any:
        prompt = self.env.renderer.render_spec(node.prompt, self.spec.prefix_parts, scope)
        ahead = self.graph.lookahead(label)
        hints = CallHints(
            next_tool=ahead.next_tool,
            expected_tool_latency_s=self.env.expected_tool_latency(ahead.next_tool)
            if ahead.next_tool
            else None,
            is_last_step=not ahead.llm_follows,
        )
        out = await call_llm(self.env, label, prompt, self._sampling(node), hints)
        return parse_output(node, out.text)

    def _key(self, item: int | None) -> str:
        """The idempotency key of the next attempt of this step (and map item): the n-th attempt
        of a step gets the same key in every process that runs it."""
        self._attempts[self._step_index, item] += 1
        where = f"{self._step_index}" if item is None else f"{self._step_index}.{item}"
        return f"{self.env.run_id}:{where}:{self._attempts[self._step_index, item]}"

    async def _tool(
        self, node: ToolNodeSpec, label: str, scope: Mapping[str, Any], item: int | None = None
    ) -> Any:
        args: dict[str, Any] = {}
        if node.args_var is not None:
            extra = lookup_path(scope, node.args_var)
            if isinstance(extra, dict):
                args.update(extra)
            elif extra is not None:
                raise StepError(
                    f"node {label!r}: args_var {node.args_var!r} holds {type(extra).__name__}, not a dict",
                    "bad_args",
                )
        for name, arg in node.args.items():
            args[name] = lookup_path(scope, arg.var) if isinstance(arg, VarArg) else arg.value
        if label == node.name:  # a tool node (not a map item): warm its successor's prompt
            self._warm_successor(node)
        result = await call_tool(self.env, label, node.tool, args, self._key(item))
        if not result.ok:
            raise tool_error(label, node.tool, result)
        return result.output

    def _warm_successor(self, node: ToolNodeSpec) -> None:
        """Speculative prefill of the LLM node the tool node's edge leads to (routers: unknown)."""
        successor = self.graph.nodes.get(self.graph.edges_from.get(node.name, END))
        if self.env.speculation is None or not isinstance(successor, LLMNodeSpec):
            return
        prompt = known_prompt(self.env.renderer, node, successor, self.spec.prefix_parts, self.state.values())
        warm_prompt(self.env, successor.name, prompt)

    async def _body(
        self, node: LLMNodeSpec | ToolNodeSpec, label: str, scope: Mapping[str, Any], item: int | None = None
    ) -> Any:
        if isinstance(node, LLMNodeSpec):
            return await self._llm(node, label, scope)
        return await self._tool(node, label, scope, item)

    async def _map(self, node: MapNodeSpec) -> list[Any]:
        items = self.state.get(node.over)
        if not isinstance(items, list):
            raise StepError(f"node {node.name!r}: 'over' variable {node.over!r} is not a list", "bad_args")
        if len(items) > node.max_items:
            raise StepError(
                f"node {node.name!r}: {len(items)} items exceed max_items={node.max_items}", "limit"
            )
        results: list[Any] = [None] * len(items)
        limiter = anyio.CapacityLimiter(node.concurrency or max(1, len(items)))
        base = self.state.values()
        body = node.body

        async def one(i: int, item: Any) -> None:
            async with limiter:
                scope = scope_view(base, {node.item_var: item, f"{node.item_var}_index": i})
                try:
                    results[i], _ = await with_retries(
                        lambda: self._body(body, node.name, scope, i),
                        what=f"node {node.name!r} item {i}",
                        retries=body.retries,
                        backoff_s=body.backoff_s,
                        timeout_s=body.timeout_s,
                    )
                except StepError as exc:
                    exc.message = f"item {i}: {exc.message}"
                    raise

        try:
            async with anyio.create_task_group() as tg:
                for i, item in enumerate(items):
                    tg.start_soon(one, i, item)
        except* StepError as group:
            first = group.exceptions[0]
            assert isinstance(first, StepError)
            raise StepError(first.message, first.kind) from None
        return results

    async def _run_node(self, node: NodeSpec) -> dict[str, Any]:
        if isinstance(node, MapNodeSpec):
            value: Any = await self._map(node)
        else:
            value = await self._body(node, node.name, self.state.values())
        return {node.output: value} if node.output is not None else {}

    def _next(self, node: NodeSpec) -> str:
        name = node.name
        if name in self.graph.edges_from:
            return self.graph.edges_from[name]
        router = self.graph.routers.get(name)
        if router is None:
            return END
        python = self.python_routers.get(name)
        if python is None:
            return route(router, self.state.values())
        dest = python(self.state.snapshot())
        if dest not in router.destinations:
            raise StepError(
                f"router of node {name!r} returned {dest!r}, not one of its declared destinations "
                f"({', '.join(router.destinations)})",
                "route",
            )
        return dest

    def _tool_is_pure(self, tool: str) -> bool:
        """Pure per the tool runtime's registry; unknown tools count as impure (the safe side)."""
        spec = self.env.tool_spec(tool)
        return bool(spec.pure) if spec is not None else False

    def _tool_rerunnable(self, tool: str) -> bool:
        return self.env.tool_rerunnable(tool)

    def _needs_marker(self, node: NodeSpec) -> bool:
        tool = node_tool(node)
        return tool is not None and not self._tool_is_pure(tool)

    # -- the walk ---------------------------------------------------------------------------
    def replay(self, steps: list[Step]) -> str:
        """Rebuild state from journaled steps; returns the node to continue at. Raises
        `RunInterrupted` when the journal ends inside a non-pure tool (see the module doc)."""
        current = self.spec.entry
        for i, step in enumerate(steps):
            if step.status == "started":
                if i == len(steps) - 1:
                    self._check_interrupted(step)
                    current = step.node  # a pure or idempotent tool: run it again, same key
                    self._resume_marker = step
                continue
            if step.status == "failed":
                current = step.node  # the run failed here: redo the node (its writes are redone too)
                continue
            self.state.apply(step.writes)
            self.visits[step.node] += 1
            current = step.next or END
        return current

    def _check_interrupted(self, marker: Step) -> None:
        node = self.graph.nodes.get(marker.node)
        tool = node_tool(node) if node is not None else None
        if tool is not None and self._tool_rerunnable(tool):
            return
        raise RunInterrupted(
            f"node {marker.node!r}: tool {tool or '?'!r} was running when the run stopped (e.g. a "
            "server crash) and is declared neither pure nor idempotent, so it is not run again (its "
            "effect may or may not have happened); start a new run to retry, or declare the tool "
            "idempotent (it applies its effect once per ToolContext.idempotency_key) or pure"
        )

    async def _step(self, node: NodeSpec, current: str, index: int) -> tuple[Step, int]:
        """Run one node and journal it (after its `started` marker, if it needs one); returns the
        journaled step and the next journal index."""
        env = self.env
        self.visits[current] += 1
        env.hub.publish(env.run_id, "node_started", current, visit=self.visits[current])
        started = time.time()
        resumed, self._resume_marker = self._resume_marker, None
        self._step_index = index
        if resumed is not None and resumed.node == current:
            self._step_index = resumed.index  # the crashed attempt's step: same keys again
        elif self._needs_marker(node):
            marker = Step(index, f"{index}:{current}:started", current, "started", started_at=started)
            await append_step(env.journal, env.run_id, marker)
            index += 1
        writes: dict[str, Any] = {}  # what this step applied to state (replayed on resume)
        error: StepError | None = None
        attempts = node.retries + 1
        try:
            produced, attempts = await with_retries(
                functools.partial(self._run_node, node),
                what=f"node {current!r}",
                retries=node.retries,
                backoff_s=node.backoff_s,
                timeout_s=node.timeout_s,
            )
            self.state.apply(produced)
            writes = produced
            nxt: str | None = self._next(node)  # a Python router may fail after the writes
            status: StepStatus = "ok"
        except (StepError, StateError) as exc:
            error = exc if isinstance(exc, StepError) else StepError(str(exc), "state")
            if node.error_output is not None and node.error_output not in writes:
                try:
                    self.state.apply({node.error_output: error.message})
                    writes = {**writes, node.error_output: error.message}
                except StateError as write_exc:  # e.g. error_output declared with a 'merge' reducer
                    error = StepError(f"{error.message}; error_output not written: {write_exc}", error.kind)
            nxt = node.on_error
            status = "error" if nxt is not None else "failed"
        step = Step(
            index=index,
            key=f"{index}:{current}",
            node=current,
            status=status,
            writes=writes,
            next=nxt,
            error=error.message if error else None,
            error_kind=error.kind if error else None,
            attempts=attempts,
            started_at=started,
            finished_at=time.time(),
        )
        await append_step(env.journal, env.run_id, step)
        env.hub.publish(
            env.run_id, "node_finished", current, status=status, error=step.error, next=nxt, writes=writes
        )
        return step, index + 1

    async def run(self, inputs: Mapping[str, Any], journaled: list[Step]) -> dict[str, Any]:
        env = self.env
        try:
            self.state.set_inputs(inputs)
        except StateError as exc:
            raise RunFailed(str(exc)) from exc
        current = self.replay(journaled)
        index = len(journaled)
        for _ in range(MAX_STEPS_PER_RUN):
            if current == END:
                return self.state.snapshot()
            node = self.graph.nodes[current]
            if node.max_visits is not None and self.visits[current] >= node.max_visits:
                env.hub.publish(env.run_id, "node_finished", current, status="exhausted")
                current = node.on_exhausted or END
                continue
            tool = node_tool(node)
            async with env.gate.step(waits=tool is None or not self._tool_rerunnable(tool)):
                step, index = await self._step(node, current, index)
            if step.status == "failed":
                raise RunFailed(step.error or "step failed", step)
            current = step.next or END
        raise RunFailed(f"run exceeded {MAX_STEPS_PER_RUN} steps")
