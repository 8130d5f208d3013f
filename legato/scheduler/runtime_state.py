"""What the real-time scheduler knows about calls, runs and replicas (plain data, no I/O).

`PolicyScheduler` and its parts (`engine_control`, `pins`, `cluster_view`, `engine_ops`) share
one `SchedulerState`: the engines, their last known capacity, the scheduler's own running /
waiting counts per replica, the calls waiting for a dispatch, the runs it has seen, and the
counters it reports in `stats`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio

from legato.cache.block_hash import tenant_salt
from legato.engine_adapter.base import Engine, EngineCapacity
from legato.scheduler.events import LLMCall

STAT_NAMES = (
    "calls",
    "dispatches",
    "pins",
    "bridge_pins",
    "unpins",
    "next_use_hints",
    "pauses",
    "resumes",
    "set_priority_unapplied",
    "requeued",
    "prefetches",
    "prefetches_ignored",
    "bad_decisions",
    "control_errors",
    "policy_errors",
)


@dataclass(slots=True)
class Pending:
    """An arrived call waiting for its `Dispatch` (or for its run's `Resume`)."""

    call: LLMCall
    ready: anyio.Event = field(default_factory=anyio.Event)
    replica: int | None = None  # set by Dispatch
    priority: int = 0
    held: bool = False  # dispatched while its run was paused


@dataclass(slots=True)
class Queued:
    """A call submitted to an engine that has not produced its first token yet."""

    priority: int
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)


@dataclass(slots=True)
class RunState:
    run_id: str
    tenant: str
    last_seq: tuple[int, ...] = ()  # prompt + output tokens of the latest finished call
    replica: int | None = None  # replica that ran the latest call
    paused: bool = False
    priority: int | None = None  # SetPriority since the last pause: re-ranks held calls
    pin: tuple[int, str] | None = None  # (replica, pin id)
    bridge: bool = False  # `pin` is the runtime's bridge pin (see `PinKeeper.bridge`)
    pin_gen: int = 0  # bumped on every pin/unpin request, so a late pin answer is dropped
    in_engine: int = 0  # calls of this run submitted to an engine, not finished
    queued: dict[str, Queued] = field(default_factory=dict)  # in an engine, no token yet
    resumed: anyio.Event = field(default_factory=anyio.Event)  # replaced at each pause


class SchedulerState:
    """The shared state of one `PolicyScheduler` (see the module docstring)."""

    def __init__(self, engines: Sequence[Engine], clock: Callable[[], float], salt_key: str | None) -> None:
        self.engines = list(engines)
        self.clock = clock
        self.salt_key = salt_key
        n = len(self.engines)
        self.capacity: list[EngineCapacity] = [EngineCapacity(16, 0, 0) for _ in range(n)]
        self.running = [0] * n
        self.waiting = [0] * n
        self.pending: dict[str, Pending] = {}
        self.placed: dict[str, int] = {}  # call id -> its replica, while the call streams
        self.runs: dict[str, RunState] = {}
        self.stats: dict[str, int] = dict.fromkeys(STAT_NAMES, 0)

    def cache_salt(self, tenant: str) -> str | None:
        """The tenant's prefix-cache salt (None when the scheduler was given no salt key)."""
        return None if self.salt_key is None else tenant_salt(tenant, self.salt_key)

    def run(self, run_id: str, tenant: str) -> RunState:
        run = self.runs.get(run_id)
        if run is None:
            run = self.runs[run_id] = RunState(run_id, tenant)
        return run


__all__ = ["STAT_NAMES", "Pending", "Queued", "RunState", "SchedulerState"]
