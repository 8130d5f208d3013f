"""Real engines as a `ReplicaControl`: how the runtime applies a policy's decisions.

`legato.scheduler.apply.DecisionApplier` checks and routes each decision; this adapter applies
it to the calls and runs `PolicyScheduler` holds and to the engines (cache operations go
through `PinKeeper`). What a real engine cannot do is declared in `traits`, not coded around:

- `Dispatch(call, replica, priority)`: the waiting `generate` is released to submit the call to
  that engine with `GenerateRequest.priority` (honoured by engines announcing
  `Capability.PRIORITY`). A call of a paused run is held until `Resume`.
- `SetPriority(run, p)`: re-ranks the run's calls held here (by a pause) and those waiting
  inside an engine with `Capability.PRIORITY` that have not produced a token yet: the `Engine`
  protocol cannot change a queued request's priority, so such a call is aborted and resubmitted
  with the new priority (`stats["requeued"]`; it joins the back of its priority class, and the
  full blocks it had prefilled stay in the prefix cache). A call already producing tokens keeps
  its priority (`stats["set_priority_unapplied"]`).
- `Pause(run)` / `Resume(run)`: a paused run's calls are held here until `Resume`, and those
  waiting inside the engine without a token yet are aborted and held too (resubmitted on
  `Resume`); its pin is dropped and its KV hinted "not needed" (`set_next_use(inf)`), which on
  the torch engine makes it as evictable as unhinted blocks. `traits.can_preempt_running` is
  False: the `Engine` protocol cannot send a running request back to the queue (the simulated
  replica can), so it runs to completion.
- `Pin` / `Unpin` / `NextUse` / `Prefetch`: see `legato.scheduler.pins`.
"""

from __future__ import annotations

import math

import anyio

from legato.engine_adapter.base import Capability
from legato.scheduler.apply import ReplicaTraits
from legato.scheduler.pins import PinKeeper
from legato.scheduler.runtime_state import SchedulerState


class EngineControl:
    """`ReplicaControl` over the engines of one `PolicyScheduler`."""

    def __init__(self, state: SchedulerState, pins: PinKeeper) -> None:
        self._s = state
        self._pins = pins
        engines = state.engines
        self._traits = ReplicaTraits(
            can_preempt_running=False,
            can_rerank_queued=all(Capability.PRIORITY in e.capabilities for e in engines),
            has_tiers=any(Capability.PREFETCH in e.capabilities for e in engines),
        )

    @property
    def traits(self) -> ReplicaTraits:
        return self._traits

    @property
    def num_replicas(self) -> int:
        return len(self._s.engines)

    def awaits_dispatch(self, call_id: str) -> bool:
        pending = self._s.pending.get(call_id)
        return pending is not None and pending.replica is None

    def dispatch(self, call_id: str, replica: int, priority: int) -> None:
        s = self._s
        pending = s.pending[call_id]
        s.stats["dispatches"] += 1
        pending.replica = replica
        pending.priority = priority
        run = s.runs.get(pending.call.run_id)
        if run is not None and run.paused:
            pending.held = True
            s.waiting[replica] += 1
            return
        pending.ready.set()

    def set_priority(self, run_id: str, priority: int) -> None:
        s = self._s
        run = s.runs.get(run_id)
        if run is None:
            return
        run.priority = priority
        for p in s.pending.values():
            if p.held and p.call.run_id == run_id:
                p.priority = priority
        for slot in run.queued.values():
            if slot.priority != priority:
                slot.priority = priority
                slot.scope.cancel()  # the call's stream aborts and resubmits it
        if run.in_engine > len(run.queued):
            s.stats["set_priority_unapplied"] += 1

    def pause(self, run_id: str, evict: bool) -> None:
        run = self._s.runs.get(run_id)
        if run is None or run.paused:
            return
        self._s.stats["pauses"] += 1
        run.paused = True
        run.priority = None
        run.resumed = anyio.Event()
        for slot in run.queued.values():  # not started in the engine yet: take it back
            slot.scope.cancel()
        self._pins.drop(run)
        self._pins.hint(run, math.inf)

    def resume(self, run_id: str) -> None:
        s = self._s
        run = s.runs.get(run_id)
        if run is None or not run.paused:
            return
        s.stats["resumes"] += 1
        run.paused = False
        run.resumed.set()
        for p in list(s.pending.values()):
            if p.held and p.call.run_id == run_id:
                if run.priority is not None:
                    p.priority = run.priority
                p.ready.set()

    def pin(self, run_id: str, ttl_s: float) -> None:
        self._pins.cache_aware = True
        run = self._s.runs.get(run_id)
        if run is not None:
            self._pins.pin(run, ttl_s)

    def unpin(self, run_id: str) -> None:
        run = self._s.runs.get(run_id)
        if run is not None:
            self._pins.drop(run)

    def next_use(self, run_id: str, at_s: float) -> None:
        self._pins.cache_aware = True
        run = self._s.runs.get(run_id)
        if run is not None:
            self._pins.hint(run, at_s)

    def prefetch(self, run_id: str, replica: int) -> None:
        self._pins.prefetch(self._s.runs.get(run_id), replica)


__all__ = ["EngineControl"]
