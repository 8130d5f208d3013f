"""`PolicyScheduler`: the real-time driver of the pure policies (DESIGN.md, "policies are pure").

The simulator (`legato.sim.driver`) drives a `Policy` in virtual time; this class
drives the **same policy objects** in real time against real engines, as the executor's
`CallScheduler`:

    async with PolicyScheduler([engine], Continuum()) as sched:
        async with Executor(sched, tools) as ex: ...

`generate(call)` emits `CallArrived` and waits (bounded by `dispatch_timeout_s`) until the policy
dispatches the call, then streams it from the chosen replica with the decided priority and emits
`CallFinished`. `notify(event)` forwards program events (run started, tool started / finished,
run finished). A tick loop delivers `Tick` every `traits.tick_s`. Nothing in `notify` awaits:
capacity refreshes are queued to one control task, and cache operations (pin, unpin, next-use
hint) each start at once as a task of their own, so they reach the engine in decision order
within one event-loop turn instead of one engine round trip per queued operation; all of these
tasks live in a task group owned by the scheduler and end with `async with`.

How each decision is applied (and what a real engine cannot do):

- `Dispatch(call, replica, priority)`: the call is submitted to that engine with
  `GenerateRequest.priority` (honoured by engines announcing `Capability.PRIORITY`).
- `SetPriority(run, p)`: re-ranks the run's calls held here (by a pause) and those waiting
  inside an engine with `Capability.PRIORITY` that have not produced a token yet: the `Engine`
  protocol cannot change a queued request's priority, so such a call is aborted and resubmitted
  with the new priority (`stats["requeued"]`; it joins the back of its priority class, and the
  full blocks it had prefilled stay in the prefix cache). **Limit**: a call already producing
  tokens keeps its priority (such decisions are counted in `stats["set_priority_unapplied"]`);
  a later `Dispatch` carries its own priority.
- `Pause(run)` / `Resume(run)`: a paused run's calls are held here (dispatched or not) until
  `Resume`, and those waiting inside the engine without a token yet are aborted and held too
  (resubmitted on `Resume`, `stats["requeued"]`); its pin is dropped and its KV hinted "not
  needed" (`set_next_use(inf)`), which on the torch engine makes it as evictable as unhinted
  blocks (LRU among them) but not *first*.
  **Limit**: a request already running in the engine is not swapped out or sent back to the
  queue (the simulator does that); it runs to completion.
- `Pin(run, ttl)` / `Unpin(run)`: `PinnableEngine.pin` on the run's last sequence (prompt +
  output tokens of its latest call, remembered here) on the replica that ran it. The pin is
  dropped when the run's next call has been admitted (its first token arrived: its blocks are
  then referenced by the request itself), when the run finishes, on `Unpin`, or by the engine at
  the TTL. A call's blocks are freed by the engine the moment it finishes, and its next step
  may evict them before any decision about the finished call can arrive; so once a policy has
  shown it manages the cache (sent a Pin or NextUse), every admitted call of a run gets a
  *bridge pin* on its prompt, held until the policy has answered the run's next event (see
  `PolicyScheduler._bridge`; `stats["bridge_pins"]`). **Limit**: the bridge covers the
  prompt's blocks; output blocks are kept only by the policy's own Pin, which reaches the
  engine an event-loop turn after the finish.
- `NextUse(run, at_s)`: `EvictionHintEngine.set_next_use(last sequence, at_s - now)` on the
  run's replica.
- `Prefetch(run, replica)`: `PrefetchEngine.prefetch` of the run's last sequence on that replica
  when the engine has KV tiers (the torch engine with a host tier and Redis pulls the prefix's
  Redis chunks into host RAM in the background, `stats["prefetches"]`); engines without tiers
  ignore it (`stats["prefetches_ignored"]`).

The `ClusterView`: replica capacity is the last `await engine.capacity()`, refreshed (coalesced)
after every event; `running` / `waiting` are the scheduler's own counts (a call is *running*
once its first chunk arrived — with chunked prefill, after its whole prompt — and *waiting* from
dispatch until then, plus calls held by a pause).
`cached_prefix_tokens` / `resident_tokens` read the torch engine's prefix cache synchronously
when it exposes one (`TorchEngine.block_hashes` + its block pool's hash table: a lock-free
snapshot read while the worker thread may be mutating it, so it can be off by a block that is
being evicted right now); for other engines they are estimated from the sequences this
scheduler remembers per replica (the longest common prefix, in whole blocks; optimistic: it
ignores evictions).

Policies declaring `traits.oracle` (the clairvoyant `oracle-evict`) are rejected: real time has no
future knowledge. `traits.unlimited_kv` is a property of the engine, which the caller sizes.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from legato.engine_adapter.base import (
    Capability,
    Engine,
    EngineCapacity,
    EvictionHintEngine,
    GenerateRequest,
    PinnableEngine,
    PrefetchEngine,
    TokenChunk,
    Tokenizer,
)
from legato.scheduler.events import (
    CallArrived,
    CallFinished,
    Event,
    LLMCall,
    ProgramEvent,
    RunFinished,
    RunStarted,
    Tick,
)
from legato.scheduler.policy import (
    Decision,
    Dispatch,
    NextUse,
    Pause,
    Pin,
    Policy,
    Prefetch,
    ReplicaView,
    Resume,
    SetPriority,
    Unpin,
)

log = logging.getLogger(__name__)

_Op = Callable[[], Awaitable[None]]


class SchedulerError(RuntimeError):
    """The runtime scheduler cannot serve a call (not started, closed, never dispatched)."""


class UnsupportedPolicyError(ValueError):
    """The policy needs something real time cannot give (future knowledge)."""


@dataclass(slots=True)
class _Pending:
    call: LLMCall
    ready: anyio.Event = field(default_factory=anyio.Event)
    replica: int | None = None  # set by Dispatch
    priority: int = 0
    held: bool = False  # dispatched while its run was paused


@dataclass(slots=True)
class _Queued:
    """A call submitted to an engine that has not produced its first token yet."""

    priority: int
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)


@dataclass(slots=True)
class _Run:
    run_id: str
    tenant: str
    last_seq: tuple[int, ...] = ()  # prompt + output tokens of the latest finished call
    replica: int | None = None  # replica that ran the latest call
    paused: bool = False
    priority: int | None = None  # SetPriority since the last pause: re-ranks held calls
    pin: tuple[int, str] | None = None  # (replica, pin id)
    bridge: bool = False  # `pin` is the runtime's bridge pin (see `_bridge`), not a policy's
    pin_gen: int = 0  # bumped on every pin/unpin request, so a late pin answer is dropped
    in_engine: int = 0  # calls of this run submitted to an engine, not finished
    queued: dict[str, _Queued] = field(default_factory=dict)  # in an engine, no token yet
    resumed: anyio.Event = field(default_factory=anyio.Event)  # replaced at each pause


class _View:
    """ClusterView over the real engines (see the module docstring for what each number is)."""

    def __init__(self, sched: PolicyScheduler) -> None:
        self._s = sched

    @property
    def num_replicas(self) -> int:
        return len(self._s.engines)

    def replica(self, index: int) -> ReplicaView:
        s = self._s
        cap = s.capacity[index]
        return ReplicaView(
            replica=index,
            block_size=cap.block_size,
            total_blocks=cap.total_blocks,
            free_blocks=cap.free_blocks,
            running=s.running[index],
            waiting=s.waiting[index],
        )

    def cached_prefix_tokens(self, replica: int, call_id: str) -> int:
        pending = self._s.pending.get(call_id)
        if pending is None:
            return 0
        call = pending.call
        return self._s.prefix_tokens(replica, call.prompt_token_ids, self._s.cache_salt(call.tenant))

    def resident_tokens(self, replica: int, run_id: str) -> int:
        run = self._s.runs.get(run_id)
        if run is None or not run.last_seq:
            return 0
        return self._s.prefix_tokens(replica, run.last_seq, self._s.cache_salt(run.tenant))


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
    ) -> None:
        if not engines:
            raise ValueError("PolicyScheduler needs at least one engine")
        if policy.traits.oracle:
            raise UnsupportedPolicyError(
                f"policy {policy.name!r} needs future knowledge (traits.oracle: a clairvoyant bound); "
                "it runs only in the simulator (--engine sim), not against a real engine"
            )
        self.engines = list(engines)
        self.policy = policy
        self.clock = clock
        self._secret = tenant_salt.encode() if tenant_salt is not None else None
        self.dispatch_timeout_s = dispatch_timeout_s
        self.control_timeout_s = control_timeout_s
        self.bridge_ttl_s = bridge_ttl_s
        n = len(self.engines)
        self.capacity: list[EngineCapacity] = [EngineCapacity(16, 0, 0) for _ in range(n)]
        self.running = [0] * n
        self.waiting = [0] * n
        self.busy_s = [0.0] * n
        self._in_engine = [0] * n
        self._tick_scope: anyio.CancelScope | None = None
        self._busy_since: list[float | None] = [None] * n
        self.pending: dict[str, _Pending] = {}
        self.runs: dict[str, _Run] = {}
        self.view = _View(self)
        self.stats: dict[str, int] = {
            "calls": 0,
            "dispatches": 0,
            "pins": 0,
            "bridge_pins": 0,
            "unpins": 0,
            "next_use_hints": 0,
            "pauses": 0,
            "resumes": 0,
            "set_priority_unapplied": 0,
            "requeued": 0,
            "prefetches": 0,
            "prefetches_ignored": 0,
            "bad_decisions": 0,
            "control_errors": 0,
            "policy_errors": 0,
        }
        self._tg: TaskGroup | None = None
        self._send: MemoryObjectSendStream[_Op] | None = None
        self._refresh_queued = False
        self._closed = False
        self._cache_aware = False  # the policy has sent a Pin or NextUse: bridge its runs' KV
        self._cache_ops = 0  # cache operations on their way to an engine
        self._cache_idle: anyio.Event | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> PolicyScheduler:
        if self._tg is not None or self._closed:
            raise SchedulerError("a PolicyScheduler is entered once")
        for i, engine in enumerate(self.engines):
            with anyio.fail_after(self.control_timeout_s):
                self.capacity[i] = await engine.capacity()
        send, recv = anyio.create_memory_object_stream[_Op](max_buffer_size=math.inf)
        self._send = send
        self._cache_idle = anyio.Event()
        self._cache_idle.set()
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        tg.start_soon(self._control_loop, recv)
        if self.policy.traits.tick_s is not None:
            self._tick_scope = anyio.CancelScope()
            tg.start_soon(self._tick_loop, self.policy.traits.tick_s, self._tick_scope)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closed = True
        tg, self._tg = self._tg, None
        if self._tick_scope is not None:
            self._tick_scope.cancel()
        if self._send is not None:
            self._send.close()  # the control loop drains what is queued, then ends
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

    async def _control_loop(self, recv: MemoryObjectReceiveStream[_Op]) -> None:
        async with recv:
            async for op in recv:
                await self._guarded(op, "control")

    async def _guarded(self, op: _Op, what: str) -> None:
        """Run an engine operation with the control timeout; an engine hiccup must not take the
        scheduler down, so a failure is counted and logged, never raised."""
        try:
            with anyio.fail_after(self.control_timeout_s):
                await op()
        except Exception:
            self.stats["control_errors"] += 1
            log.exception("scheduler %s operation failed", what)

    async def settle(self) -> None:
        """Wait until every engine operation started so far (pins, hints, refreshes) is done."""
        done = anyio.Event()

        async def mark() -> None:
            done.set()

        self._queue(mark)
        if self._send is None or self._closed:
            return
        with anyio.fail_after(self.control_timeout_s):
            await done.wait()
            while self._cache_idle is not None and not self._cache_idle.is_set():
                await self._cache_idle.wait()

    def _cache_op(self, op: _Op) -> None:
        """Start a pin / unpin / hint now, as its own task, instead of behind the control queue.

        Why: the control loop awaits one engine round trip per operation, and a torch engine
        answers between steps, so a pin queued behind k operations reached the engine k steps
        after the decision, long after those steps could evict the blocks. Tasks started here
        begin in FIFO order on the next event-loop turn and each one hands its command to the
        engine before its first await (`TorchEngine` queues commands synchronously), so the
        engine sees them in decision order, all before its next step."""
        if self._tg is None or self._closed:
            return
        self._cache_ops += 1
        if self._cache_idle is not None and self._cache_idle.is_set():
            self._cache_idle = anyio.Event()
        self._tg.start_soon(self._run_cache_op, op)

    async def _run_cache_op(self, op: _Op) -> None:
        try:
            await self._guarded(op, "cache")
        finally:
            self._cache_ops -= 1
            if self._cache_ops == 0 and self._cache_idle is not None:
                self._cache_idle.set()

    def _queue(self, op: _Op) -> None:
        if self._send is None or self._closed:
            return
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._send.send_nowait(op)

    def _queue_refresh(self) -> None:
        if self._refresh_queued:
            return
        self._refresh_queued = True

        async def refresh() -> None:
            self._refresh_queued = False
            for i, engine in enumerate(self.engines):
                self.capacity[i] = await engine.capacity()

        self._queue(refresh)

    # --- CallScheduler -----------------------------------------------------------------------

    @property
    def tokenizer(self) -> Tokenizer:
        return self.engines[0].tokenizer

    def cache_salt(self, tenant: str) -> str | None:
        if self._secret is None:
            return None
        return hmac.new(self._secret, tenant.encode(), hashlib.sha256).hexdigest()[:32]

    async def generate(self, call: LLMCall) -> AsyncIterator[TokenChunk]:
        if self._tg is None or self._closed:
            raise SchedulerError("PolicyScheduler is not running: use `async with PolicyScheduler(...)`")
        if call.call_id in self.pending:
            raise SchedulerError(f"call {call.call_id!r} is already queued")
        self.stats["calls"] += 1
        run = self._run(call.run_id, call.tenant)
        pending = _Pending(call)
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
        # aclosing: a consumer that stops early closes the inner stream (and the engine request) now
        async with contextlib.aclosing(self._stream(call, run, pending.replica, pending.priority)) as inner:
            async for chunk in inner:
                yield chunk

    async def _stream(
        self, call: LLMCall, run: _Run, replica: int, priority: int
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
        self._busy_start(replica)
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
                slot = _Queued(priority)
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
                    self.stats["requeued"] += 1
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
            self._bridge(run, replica, call.prompt_token_ids)  # admitted: replaces the run's pin
            chunk = first
            while True:
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
            self._busy_end(replica)
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
            self._run(event.run_id, event.tenant)
        self._emit_quietly(event)
        if isinstance(event, RunFinished):
            run = self.runs.pop(event.run_id, None)
            if run is not None:
                self._drop_pin(run)

    # --- events and decisions ----------------------------------------------------------------

    def _run(self, run_id: str, tenant: str) -> _Run:
        run = self.runs.get(run_id)
        if run is None:
            run = self.runs[run_id] = _Run(run_id, tenant)
        return run

    def _emit(self, event: Event) -> None:
        decisions = self.policy.on_event(event, self.clock(), self.view)
        for d in decisions:
            self._apply(d)
        if not isinstance(event, (CallFinished, Tick)):
            run_id = event.call.run_id if isinstance(event, CallArrived) else event.run_id
            run = self.runs.get(run_id)
            if run is not None and run.bridge and run.in_engine == 0:
                # the policy has seen the run's next event and said what it wants kept (a Pin
                # replaced the bridge already): the bridge's job is done
                self._drop_pin(run)
        self._queue_refresh()

    def _emit_quietly(self, event: Event) -> None:
        """For events whose sender must not see a policy failure (notify, ticks, finishes)."""
        try:
            self._emit(event)
        except Exception:
            self.stats["policy_errors"] += 1
            log.exception("policy %s failed on %r", self.policy.name, event)

    def _bad(self, message: str) -> None:
        self.stats["bad_decisions"] += 1
        log.warning("policy %s: %s", self.policy.name, message)

    def _apply(self, d: Decision) -> None:
        if isinstance(d, Dispatch):
            self._dispatch(d)
        elif isinstance(d, SetPriority):
            run = self.runs.get(d.run_id)
            if run is not None:
                run.priority = d.priority
                for p in self.pending.values():
                    if p.held and p.call.run_id == d.run_id:
                        p.priority = d.priority
                for slot in run.queued.values():
                    if slot.priority != d.priority:
                        slot.priority = d.priority
                        slot.scope.cancel()  # `_stream` aborts and resubmits it
                if run.in_engine > len(run.queued):
                    self.stats["set_priority_unapplied"] += 1
        elif isinstance(d, Pause):
            self._pause(d.run_id)
        elif isinstance(d, Resume):
            self._resume(d.run_id)
        elif isinstance(d, Pin):
            self._cache_aware = True
            self._pin(d)
        elif isinstance(d, Unpin):
            run = self.runs.get(d.run_id)
            if run is not None:
                self._drop_pin(run)
        elif isinstance(d, NextUse):
            self._cache_aware = True
            run = self.runs.get(d.run_id)
            if run is not None:
                self._hint(run, d.at_s)
        elif isinstance(d, Prefetch):
            self._prefetch(d)
        else:
            self._bad(f"unknown decision {d!r}")

    def _dispatch(self, d: Dispatch) -> None:
        pending = self.pending.get(d.call_id)
        if pending is None or pending.replica is not None:
            self._bad(f"dispatched unknown or already dispatched call {d.call_id!r}")
            return
        if not 0 <= d.replica < len(self.engines):
            self._bad(f"dispatched {d.call_id!r} to replica {d.replica} (have {len(self.engines)})")
            return
        self.stats["dispatches"] += 1
        pending.replica = d.replica
        pending.priority = d.priority
        run = self.runs.get(pending.call.run_id)
        if run is not None and run.paused:
            pending.held = True
            self.waiting[d.replica] += 1
            return
        pending.ready.set()

    def _pause(self, run_id: str) -> None:
        run = self.runs.get(run_id)
        if run is None or run.paused:
            return
        self.stats["pauses"] += 1
        run.paused = True
        run.priority = None
        run.resumed = anyio.Event()
        for slot in run.queued.values():  # not started in the engine yet: take it back
            slot.scope.cancel()
        self._drop_pin(run)
        self._hint(run, math.inf)

    def _resume(self, run_id: str) -> None:
        run = self.runs.get(run_id)
        if run is None or not run.paused:
            return
        self.stats["resumes"] += 1
        run.paused = False
        run.resumed.set()
        for p in list(self.pending.values()):
            if p.held and p.call.run_id == run_id:
                if run.priority is not None:
                    p.priority = run.priority
                p.ready.set()

    def _pin(self, d: Pin) -> None:
        run = self.runs.get(d.run_id)
        if run is None or run.replica is None or not run.last_seq or not d.ttl_s > 0:
            return
        if Capability.PIN not in self.engines[run.replica].capabilities:
            return
        self.stats["pins"] += 1
        self._replace_pin(run, run.replica, run.last_seq, d.ttl_s, bridge=False)

    def _bridge(self, run: _Run, replica: int, prompt: Sequence[int]) -> None:
        """A call of `run` was admitted: the run's pin (its previous sequence) goes, and, for a
        policy that manages the cache (it has sent a Pin or NextUse), a *bridge pin* on the
        call's prompt takes its place.

        Why: when the call finishes the engine frees its blocks at once, and its next step may
        evict them (a queued request is admitted in that very step) before the policy's Pin or
        NextUse for the finished call can arrive: one event-loop turn is slower than one engine
        step. The bridge costs nothing while the call runs (the request references the same
        blocks) and holds the prompt's blocks from the finish until the policy has answered
        the run's next event (its `Pin` replaces the bridge; otherwise the bridge is dropped
        then, or at `Pause` / `Unpin` / run end, or by the engine at `bridge_ttl_s`). Policies
        that never pin nor hint (`fcfs-lru`) get no bridge, so the baselines stay unchanged."""
        if not self._cache_aware or not prompt or Capability.PIN not in self.engines[replica].capabilities:
            self._drop_pin(run)
            return
        self.stats["bridge_pins"] += 1
        self._replace_pin(run, replica, tuple(prompt), self.bridge_ttl_s, bridge=True)

    def _replace_pin(
        self, run: _Run, replica: int, tokens: tuple[int, ...], ttl_s: float, *, bridge: bool
    ) -> None:
        """Pin `tokens`, then unpin the run's previous pin: in that order, so the engine never
        sees a moment in which the shared prefix of both is unpinned."""
        old, run.pin = run.pin, None
        run.pin_gen += 1  # a pin still on its way is now stale: it unpins itself on arrival
        run.bridge = bridge
        gen = run.pin_gen
        salt = self.cache_salt(run.tenant)
        pinnable: PinnableEngine = self.engines[replica]  # type: ignore[assignment]

        async def pin() -> None:
            pin_id = await pinnable.pin(tokens, salt, ttl_s)
            if run.pin_gen == gen and self.runs.get(run.run_id) is run:
                run.pin = (replica, pin_id)
            else:  # replaced, unpinned or finished while the pin was on its way
                await pinnable.unpin(pin_id)

        self._cache_op(pin)
        if old is not None:
            self._unpin(*old)

    def _drop_pin(self, run: _Run) -> None:
        run.pin_gen += 1
        run.bridge = False
        pin, run.pin = run.pin, None
        if pin is not None:
            self._unpin(*pin)

    def _unpin(self, replica: int, pin_id: str) -> None:
        pinnable: PinnableEngine = self.engines[replica]  # type: ignore[assignment]
        self.stats["unpins"] += 1

        async def unpin() -> None:
            await pinnable.unpin(pin_id)

        self._cache_op(unpin)

    def _hint(self, run: _Run, at_s: float) -> None:
        if run.replica is None or not run.last_seq:
            return
        engine = self.engines[run.replica]
        if Capability.EVICTION_HINTS not in engine.capabilities:
            return
        hinted: EvictionHintEngine = engine  # type: ignore[assignment]
        tokens, salt = run.last_seq, self.cache_salt(run.tenant)
        self.stats["next_use_hints"] += 1

        async def hint() -> None:
            delay = at_s if math.isinf(at_s) else max(0.0, at_s - self.clock())
            await hinted.set_next_use(tokens, salt, delay)

        self._cache_op(hint)

    def _prefetch(self, d: Prefetch) -> None:
        run = self.runs.get(d.run_id)
        if not 0 <= d.replica < len(self.engines):
            self._bad(f"Prefetch to replica {d.replica}: there are {len(self.engines)} replicas")
            return
        engine = self.engines[d.replica]
        if run is None or not run.last_seq or Capability.PREFETCH not in engine.capabilities:
            self.stats["prefetches_ignored"] += 1
            return
        self.stats["prefetches"] += 1
        tiered: PrefetchEngine = engine  # type: ignore[assignment]
        tokens, salt = run.last_seq, self.cache_salt(run.tenant)

        async def prefetch() -> None:
            await tiered.prefetch(tokens, salt, 0.0)

        self._cache_op(prefetch)

    # --- prefix knowledge ------------------------------------------------------------------

    def prefix_tokens(self, replica: int, token_ids: Sequence[int], salt: str | None) -> int:
        """Leading tokens of `token_ids` resident on the replica (see the module docstring)."""
        engine: Any = self.engines[replica]
        core = getattr(engine, "core", None)
        block_hashes = getattr(engine, "block_hashes", None)
        table = getattr(getattr(core, "blocks", None), "cached", None)
        bs = self.capacity[replica].block_size
        if block_hashes is not None and isinstance(table, dict):
            n = 0
            for h in block_hashes(token_ids, salt):
                if h not in table:
                    break
                n += 1
            return n * bs
        best = 0
        for run in self.runs.values():
            if run.replica != replica or self.cache_salt(run.tenant) != salt:
                continue
            seq = run.last_seq
            k, limit = 0, min(len(seq), len(token_ids))
            while k < limit and seq[k] == token_ids[k]:
                k += 1
            best = max(best, k)
        return best // bs * bs

    # --- engine busy time (scheduler's view: some call of ours is in the engine) -----------

    def _busy_start(self, replica: int) -> None:
        self._in_engine[replica] += 1
        if self._busy_since[replica] is None:
            self._busy_since[replica] = self.clock()

    def _busy_end(self, replica: int) -> None:
        self._in_engine[replica] -= 1
        since = self._busy_since[replica]
        if since is not None and self._in_engine[replica] == 0:
            self.busy_s[replica] += self.clock() - since
            self._busy_since[replica] = None


__all__ = ["PolicyScheduler", "SchedulerError", "UnsupportedPolicyError"]
