"""The simulated replicas as a `ReplicaControl`: how the simulator applies a policy's decisions.

`legato.scheduler.apply.DecisionApplier` checks and routes each decision; this adapter turns it
into typed *replica ops* for the simulated replicas (`SimEngine`): a new call (`AddCall`), a
pause, a resume, a re-rank, an eviction hint, a pin, an unpin, plus the driver's own ops (pin
expiry, a finished run's cleanup, a prefetch). Like a real engine's input queue, an op reaches
a replica between two steps: at once when the replica is idle, else at its next step boundary.
Ops that change what the replica may run (a new call, a pause, a resume) also cut a planned
decode jump short, so they take effect one step later, as in a real engine; ops that only change
bookkeeping (hints, pins, priorities of queued calls) wait for the jump to end.

Routing: `Pause`, `Resume`, `SetPriority`, `NextUse` and `Unpin` go to every replica (a run's
KV or queued calls may be on any); a `Pin` goes to the replica that holds the run's last path;
a `Prefetch` to the replica it names (only when the replicas have KV tiers).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from legato.scheduler.apply import ReplicaTraits
from legato.sim.engine import SimEngine, SimRequest
from legato.sim.workload import Segment


@dataclass(frozen=True, slots=True)
class AddCall:
    req: SimRequest
    prompt: tuple[Segment, ...]
    out_seg: Segment


@dataclass(frozen=True, slots=True)
class PauseRun:
    run: int


@dataclass(frozen=True, slots=True)
class ResumeRun:
    run: int


@dataclass(frozen=True, slots=True)
class Reprioritize:
    run: int
    priority: int


@dataclass(frozen=True, slots=True)
class Hint:
    run: int
    at_s: float


@dataclass(frozen=True, slots=True)
class PinRun:
    run: int
    ttl_s: float


@dataclass(frozen=True, slots=True)
class UnpinRun:
    run: int
    version: int | None = None  # set: only the pin of that version (its TTL expiry)


@dataclass(frozen=True, slots=True)
class ForgetRun:
    run: int


@dataclass(frozen=True, slots=True)
class PrefetchRun:
    run: int


ReplicaOp = AddCall | PauseRun | ResumeRun | Reprioritize | Hint | PinRun | UnpinRun | ForgetRun | PrefetchRun
_URGENT = (AddCall, PauseRun, ResumeRun)  # ops that cut a decode jump short


@dataclass(frozen=True, slots=True)
class SimHooks:
    """What the control needs from the discrete-event loop that owns the replicas."""

    now: Callable[[], float]
    awaits_dispatch: Callable[[str], bool]  # the call arrived and is not dispatched yet
    new_call: Callable[[str, int, int], AddCall]  # (call id, replica, priority): take it
    schedule_step: Callable[[int, float, int], None]  # (replica, step end, engine version)
    schedule_kick: Callable[[int], None]  # (replica): plan its next step now
    schedule_expiry: Callable[[int, int, float], None]  # (run, pin version, when)


class SimControl:
    """`ReplicaControl` over the simulated replicas of one simulation."""

    def __init__(
        self,
        engines: Sequence[SimEngine],
        run_index: Mapping[str, int],
        hooks: SimHooks,
        *,
        has_tiers: bool,
    ) -> None:
        self._engines = engines
        self._runs = run_index
        self._hooks = hooks
        self._traits = ReplicaTraits(can_preempt_running=True, has_tiers=has_tiers)
        self.pending_ops: list[list[ReplicaOp]] = [[] for _ in engines]
        self.kicked = [False] * len(engines)
        self.pin_home: dict[int, int] = {}  # run -> replica holding its pin
        self.pauses = 0  # Pause decisions (each counted once, whatever the replicas did)
        self.prefetches = 0  # Prefetch decisions

    # --- ReplicaControl ----------------------------------------------------------------------

    @property
    def traits(self) -> ReplicaTraits:
        return self._traits

    @property
    def num_replicas(self) -> int:
        return len(self._engines)

    def awaits_dispatch(self, call_id: str) -> bool:
        return self._hooks.awaits_dispatch(call_id)

    def dispatch(self, call_id: str, replica: int, priority: int) -> None:
        self.op(replica, self._hooks.new_call(call_id, replica, priority))

    def set_priority(self, run_id: str, priority: int) -> None:
        run = self._runs.get(run_id)
        if run is not None:
            self._broadcast(Reprioritize(run, priority))

    def pause(self, run_id: str, evict: bool) -> None:
        self.pauses += 1  # the one count of program pauses (RunOutcome.pauses)
        if not evict:
            return  # a router-level pause: the policy holds the calls, engines are not told
        run = self._runs.get(run_id)
        if run is not None:
            self._broadcast(PauseRun(run))

    def resume(self, run_id: str) -> None:
        run = self._runs.get(run_id)
        if run is not None:
            self._broadcast(ResumeRun(run))

    def pin(self, run_id: str, ttl_s: float) -> None:
        run = self._runs.get(run_id)
        if run is None:
            return
        for e in self._engines:
            if run in e.run_path:
                self.op(e.index, PinRun(run, ttl_s))
                return

    def unpin(self, run_id: str) -> None:
        run = self._runs.get(run_id)
        if run is not None:
            self._broadcast(UnpinRun(run))

    def next_use(self, run_id: str, at_s: float) -> None:
        run = self._runs.get(run_id)
        if run is not None:
            self._broadcast(Hint(run, at_s))

    def prefetch(self, run_id: str, replica: int) -> None:
        self.prefetches += 1
        run = self._runs.get(run_id)
        if run is not None and self._traits.has_tiers:
            self.op(replica, PrefetchRun(run))

    # --- replica ops -------------------------------------------------------------------------

    def _broadcast(self, op: ReplicaOp) -> None:
        for e in self._engines:
            self.op(e.index, op)

    def op(self, r: int, op: ReplicaOp) -> None:
        """Apply `op` now if replica `r` is between steps, else at its next step boundary."""
        e = self._engines[r]
        if e.in_flight:
            self.pending_ops[r].append(op)
            if isinstance(op, _URGENT):
                new_end = e.truncate(self._hooks.now())
                if new_end is not None:
                    self._hooks.schedule_step(r, new_end, e.version)
            return
        self._do(e, op)
        if not self.kicked[r]:
            self.kicked[r] = True
            self._hooks.schedule_kick(r)

    def flush(self, e: SimEngine) -> None:
        """Apply the ops that waited for replica `e`'s step to end."""
        ops, self.pending_ops[e.index] = self.pending_ops[e.index], []
        for op in ops:
            self._do(e, op)

    def _do(self, e: SimEngine, op: ReplicaOp) -> None:
        now = self._hooks.now()
        if isinstance(op, AddCall):
            e.add(op.req, op.prompt, op.out_seg)
        elif isinstance(op, PauseRun):
            e.pause(op.run, now)
        elif isinstance(op, ResumeRun):
            e.resume(op.run)
        elif isinstance(op, Reprioritize):
            e.set_priority(op.run, op.priority)
        elif isinstance(op, Hint):
            e.set_hint(op.run, op.at_s)
        elif isinstance(op, UnpinRun):
            e.unpin(op.run, op.version, now)
        elif isinstance(op, PinRun):
            version = e.pin(op.run)
            if version is not None:
                self.pin_home[op.run] = e.index
                self._hooks.schedule_expiry(op.run, version, now + max(0.0, op.ttl_s))
        elif isinstance(op, ForgetRun):
            e.forget_run(op.run, now)
        else:
            e.prefetch(op.run, now)


__all__ = [
    "AddCall",
    "ForgetRun",
    "Hint",
    "PauseRun",
    "PinRun",
    "PrefetchRun",
    "ReplicaOp",
    "Reprioritize",
    "ResumeRun",
    "SimControl",
    "SimHooks",
    "UnpinRun",
]
