"""`PolicyScheduler`: the real-time driver of the pure policies (DESIGN.md, "policies are pure").

The simulator (`legato.sim.driver`) drives a `Policy` in virtual time; this class drives the
**same policy objects** in real time against real engines, as the executor's `CallScheduler`:

    async with PolicyScheduler([engine], Continuum()) as sched:
        async with Executor(sched, tools) as ex: ...

`generate(call)` emits `CallArrived` and waits (bounded by `dispatch_timeout_s`) until the policy
dispatches the call, then streams it from the chosen replica with the decided priority and emits
`CallFinished`. `notify(event)` forwards program events (run started, tool started / finished,
run finished). A tick loop delivers `Tick` every `traits.tick_s`. Nothing here awaits an engine
on a policy's path: engine operations go through `EngineOps`.

The parts, one concern each: `runtime_state` (what is known about calls, runs, replicas),
`apply` + `engine_control` (the one decision applier and the engines' side of it), `pins` (pin,
bridge pin, hints, prefetch), `cluster_view` (what a policy sees), `engine_ops` (how operations
reach the engines), `accounting` (busy time).

A bad decision (`legato.scheduler.apply.BadDecision`: a policy bug) is counted in
`stats["bad_decisions"]` and logged, like any other policy failure (`stats["policy_errors"]`):
a policy bug must not take a server down. Policies declaring `traits.oracle` (the clairvoyant
`oracle-evict` bound) are rejected: real time has no future knowledge. `traits.unlimited_kv` is a
property of the engine, which the caller sizes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence

import anyio
from anyio.abc import TaskGroup

from legato.cache.common_prefix import common_prefix
from legato.engine_adapter.base import (
    Capability,
    Engine,
    EngineCapacity,
    GenerateRequest,
    TokenChunk,
    Tokenizer,
)
from legato.scheduler.accounting import BusyClock
from legato.scheduler.apply import BadDecision, DecisionApplier
from legato.scheduler.cluster_view import EngineClusterView
from legato.scheduler.decision_log import DecisionLog
from legato.scheduler.engine_control import EngineControl
from legato.scheduler.engine_ops import EngineOps
from legato.scheduler.events import (
    CallArrived,
    CallFinished,
    Event,
    LLMCall,
    ProgramEvent,
    RunFinished,
    RunStarted,
    TenantWeight,
    Tick,
)
from legato.scheduler.pins import PinKeeper
from legato.scheduler.policy import Decision, Policy
from legato.scheduler.runtime_state import Pending, Queued, RunState, SchedulerState

log = logging.getLogger(__name__)


class SchedulerError(RuntimeError):
    """The runtime scheduler cannot serve a call (not started, closed, never dispatched)."""


class UnsupportedPolicyError(ValueError):
    """The policy needs something real time cannot give (future knowledge)."""


class PolicyScheduler:
    """`CallScheduler` that applies a pure `Policy`'s decisions to real engines in real time."""

    def __init__(
        self,
        engines: Sequence[Engine],
        policy: Policy,
        *,
        clock: Callable[[], float] = time.monotonic,
        tenant_salt: str | None = None,
        dispatch_timeout_s: float = 600.0,
        control_timeout_s: float = 30.0,
        bridge_ttl_s: float = 120.0,
        decisions: list[Decision] | None = None,
    ) -> None:
        """`tenant_salt`: the key of the tenants' cache salts (`legato.cache.block_hash.tenant_salt`;
        None: no salt, the embedded single-tenant default). `decisions`, when given, receives
        every decision in the order it was applied."""
        if not engines:
            raise ValueError("PolicyScheduler needs at least one engine")
        if policy.traits.oracle:
            raise UnsupportedPolicyError(
                f"policy {policy.name!r} needs future knowledge (traits.oracle: a clairvoyant bound); "
                "it runs only in the simulator (--engine sim), not against a real engine"
            )
        self.policy = policy
        self.clock = clock
        self.dispatch_timeout_s = dispatch_timeout_s
        self.control_timeout_s = control_timeout_s
        self.state = SchedulerState(engines, clock, tenant_salt)
        self.ops = EngineOps(self.state, control_timeout_s)
        self.pins = PinKeeper(self.state, self.ops, bridge_ttl_s)
        self.control = EngineControl(self.state, self.pins)
        self.decision_log = DecisionLog(self._owner, self._tenant_of)  # what /ui shows
        self.applier = DecisionApplier(self.control, record=decisions, journal=self.decision_log)
        self.view = EngineClusterView(self.state)
        self.busy = BusyClock(len(self.state.engines), clock)
        self._tg: TaskGroup | None = None
        self._tick_scope: anyio.CancelScope | None = None
        self._closed = False

    # --- what callers and tests read --------------------------------------------------------

    @property
    def engines(self) -> list[Engine]:
        return self.state.engines

    @property
    def capacity(self) -> list[EngineCapacity]:
        return self.state.capacity

    @property
    def running(self) -> list[int]:
        return self.state.running

    @property
    def waiting(self) -> list[int]:
        return self.state.waiting

    @property
    def pending(self) -> dict[str, Pending]:
        return self.state.pending

    @property
    def placed(self) -> dict[str, int]:
        return self.state.placed

    @property
    def runs(self) -> dict[str, RunState]:
        return self.state.runs

    @property
    def stats(self) -> dict[str, int]:
        return self.state.stats

    @property
    def busy_s(self) -> list[float]:
        return self.busy.busy_s

    def _owner(self, call_id: str) -> tuple[str | None, str | None]:
        pending = self.pending.get(call_id)
        return (None, None) if pending is None else (pending.call.run_id, pending.call.tenant)

    def _tenant_of(self, run_id: str) -> str | None:
        run = self.runs.get(run_id)
        return None if run is None else run.tenant

    # --- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> PolicyScheduler:
        if self._tg is not None or self._closed:
            raise SchedulerError("a PolicyScheduler is entered once")
        for i, engine in enumerate(self.engines):
            with anyio.fail_after(self.control_timeout_s):
                self.capacity[i] = await engine.capacity()
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self.ops.start(tg)
        if self.policy.traits.tick_s is not None:
            self._tick_scope = anyio.CancelScope()
            tg.start_soon(self._tick_loop, self.policy.traits.tick_s, self._tick_scope)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closed = True
        tg, self._tg = self._tg, None
        if self._tick_scope is not None:
            self._tick_scope.cancel()
        self.ops.close()  # the control lane drains what is queued, then ends
        for p in self.pending.values():  # wake waiters; they see the scheduler closed
            p.ready.set()
        if tg is not None:
            tg.cancel_scope.deadline = anyio.current_time() + self.control_timeout_s
            await tg.__aexit__(None, None, None)

    async def _tick_loop(self, tick_s: float, scope: anyio.CancelScope) -> None:
        with scope:
            while not self._closed:
                await anyio.sleep(tick_s)
                self._emit_quietly(Tick())

    async def settle(self) -> None:
        """Wait until every engine operation started so far (pins, hints, refreshes) is done."""
        await self.ops.settle()

    # --- CallScheduler -----------------------------------------------------------------------

    @property
    def tokenizer(self) -> Tokenizer:
        return self.engines[0].tokenizer

    def cache_salt(self, tenant: str) -> str | None:
        return self.state.cache_salt(tenant)

    async def generate(self, call: LLMCall) -> AsyncIterator[TokenChunk]:
        if self._tg is None or self._closed:
            raise SchedulerError("PolicyScheduler is not running: use `async with PolicyScheduler(...)`")
        if call.call_id in self.pending:
            raise SchedulerError(f"call {call.call_id!r} is already queued")
        self.state.stats["calls"] += 1
        run = self.state.run(call.run_id, call.tenant)
        if call.reused_context_tokens is None and call.prompt_token_ids:
            # How much of the prompt repeats the run's latest context (what its KV could hold):
            # a node may open with other prefix parts than the call before it.
            reused = common_prefix(tuple(call.prompt_token_ids), run.last_seq)
            call = dataclasses.replace(call, reused_context_tokens=reused)
        pending = Pending(call)
        self.pending[call.call_id] = pending
        try:
            self._emit(CallArrived(call))
            try:
                with anyio.fail_after(self.dispatch_timeout_s):
                    await pending.ready.wait()
            except TimeoutError:
                raise SchedulerError(
                    f"policy {self.policy.name!r} did not dispatch call {call.call_id!r} within "
                    f"{self.dispatch_timeout_s}s (paused: {run.paused})"
                ) from None
        finally:
            self.pending.pop(call.call_id, None)
            if pending.held and pending.replica is not None:
                self.waiting[pending.replica] -= 1
        if self._closed or pending.replica is None:
            raise SchedulerError("PolicyScheduler closed before the call was dispatched")
        self.placed[call.call_id] = pending.replica
        try:
            # aclosing: a consumer that stops early closes the inner stream (and the engine request) now
            async with contextlib.aclosing(
                self._stream(call, run, pending.replica, pending.priority)
            ) as inner:
                async for chunk in inner:
                    yield chunk
        finally:
            self.placed.pop(call.call_id, None)

    async def _stream(
        self, call: LLMCall, run: RunState, replica: int, priority: int
    ) -> AsyncGenerator[TokenChunk, None]:
        engine = self.engines[replica]
        rerankable = Capability.PRIORITY in engine.capabilities
        salt = self.cache_salt(call.tenant)
        output: list[int] = []
        prompt_tokens = len(call.prompt_token_ids)
        cached = 0
        reason = "abort"
        started = False
        attempt = 0
        stream: AsyncIterator[TokenChunk] | None = None
        self.waiting[replica] += 1
        run.in_engine += 1
        self.busy.start(replica)
        try:
            first: TokenChunk | None = None
            while first is None:
                request = GenerateRequest(
                    # a re-ranked call is resubmitted under a fresh id (the old one is being aborted)
                    request_id=call.call_id if attempt == 0 else f"{call.call_id}~{attempt}",
                    prompt_token_ids=call.prompt_token_ids,
                    sampling=call.sampling,
                    priority=priority,
                    cache_salt=salt,
                    session_id=call.run_id,
                )
                stream = engine.generate(request)
                slot = Queued(priority)
                if rerankable:
                    run.queued[call.call_id] = slot
                try:
                    with slot.scope:
                        first = await stream.__anext__()
                except StopAsyncIteration:
                    break
                finally:
                    run.queued.pop(call.call_id, None)
                if first is None:  # re-ranked or paused while it waited in the engine: resubmit
                    await self._close(stream)
                    stream = None
                    attempt += 1
                    self.state.stats["requeued"] += 1
                    if run.paused:
                        with anyio.fail_after(self.dispatch_timeout_s):
                            await run.resumed.wait()
                        # a SetPriority during the pause re-ranks it
                        priority = slot.priority if run.priority is None else run.priority
                    else:
                        priority = slot.priority
            if first is None or stream is None:
                return
            started = True
            self.waiting[replica] -= 1
            self.running[replica] += 1
            self.pins.bridge(run, replica, call.prompt_token_ids)  # admitted: replaces the run's pin
            chunk = first
            while True:
                # n > 1 is one call (one engine request, one prefill); the program continues
                # from sample 0, so that is the sequence whose KV the run keeps
                if chunk.index == 0:
                    output.extend(chunk.token_ids)
                prompt_tokens = chunk.prompt_tokens or prompt_tokens
                cached = chunk.cached_tokens or cached
                if chunk.finished:
                    reason = chunk.finish_reason or "stop"
                yield chunk
                if chunk.finished:
                    break
                try:
                    chunk = await stream.__anext__()
                except StopAsyncIteration:
                    break
        finally:
            if stream is not None:
                await self._close(stream)
            if started:
                self.running[replica] -= 1
            else:
                self.waiting[replica] -= 1
            run.in_engine -= 1
            self.busy.end(replica)
            if reason != "abort":
                run.last_seq = tuple(call.prompt_token_ids) + tuple(output)
                run.replica = replica
            self._emit_quietly(
                CallFinished(call.call_id, call.run_id, prompt_tokens, len(output), cached, reason)
            )

    @staticmethod
    async def _close(stream: AsyncIterator[TokenChunk]) -> None:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            with anyio.CancelScope(shield=True):
                await aclose()

    def notify(self, event: ProgramEvent) -> None:
        if self._closed:
            return
        if isinstance(event, RunStarted):
            self.state.run(event.run_id, event.tenant)
        self._emit_quietly(event)
        if isinstance(event, RunFinished):
            run = self.runs.pop(event.run_id, None)
            self.decision_log.forget(event.run_id)
            if run is not None:
                self.pins.drop(run)

    # --- events and decisions ----------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        decisions = self.policy.on_event(event, self.clock(), self.view)
        try:
            self.applier.apply(decisions, event)
        except BadDecision as bad:
            self.stats["bad_decisions"] += len(bad.problems)
            log.warning("policy %s: %s", self.policy.name, bad)
        if not isinstance(event, (CallFinished, Tick, TenantWeight)):
            run_id = event.call.run_id if isinstance(event, CallArrived) else event.run_id
            run = self.runs.get(run_id)
            if run is not None and run.bridge and run.in_engine == 0:
                # the policy has seen the run's next event and said what it wants kept (a Pin
                # replaced the bridge already): the bridge's job is done
                self.pins.drop(run)
        self.ops.queue_refresh()

    def _emit_quietly(self, event: Event) -> None:
        """For events whose sender must not see a policy failure (notify, ticks, finishes)."""
        try:
            self._emit(event)
        except Exception:
            self.stats["policy_errors"] += 1
            log.exception("policy %s failed on %r", self.policy.name, event)


__all__ = ["PolicyScheduler", "SchedulerError", "UnsupportedPolicyError"]
