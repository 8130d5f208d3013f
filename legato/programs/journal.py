"""The step journal: every finished step of a run, recorded before the next step starts.

A run is durable because of this: a restarted server reads a run's steps and resumes it without
redoing finished work (the declarative executor replays recorded state writes; a dynamic agent
gets recorded results back for the calls it already made). Steps are plain JSON data so a Redis
or SQLite store can implement `JournalStore` by serialising them with `Step.to_dict`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import anyio

StepStatus = Literal["ok", "error", "failed", "started"]
"""ok: finished; error: failed but the run followed the node's error route; failed: the run
failed at this step (a resumed run retries it); started: a marker journaled *before* a tool that
is not declared pure runs, so a resumed run can tell "finished" from "interrupted mid-flight" (a
marker with no step after it) and never runs such a tool twice."""


@dataclass(frozen=True, slots=True)
class Step:
    index: int  # position in the run (0, 1, ...)
    key: str  # node name (declarative) or call path (dynamic agents, e.g. "3" or "2.f0.1")
    node: str  # node name or call-site label
    status: StepStatus
    writes: dict[str, Any] = field(default_factory=dict)  # state writes (declarative)
    result: Any = None  # the call's result (dynamic agents)
    next: str | None = None  # where the run went next (declarative)
    error: str | None = None
    error_kind: str | None = None
    attempts: int = 1
    started_at: float = 0.0  # wall-clock (time.time()) seconds
    finished_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Step:
        return cls(**data)


@runtime_checkable
class JournalStore(Protocol):
    async def append(self, run_id: str, step: Step) -> None:
        """Durably record `step`; returns only once it would survive a restart of this store."""
        ...

    async def steps(self, run_id: str) -> list[Step]:
        """The run's steps in the order appended (empty for an unknown run)."""
        ...


JOURNAL_TIMEOUT_S = 30.0
"""A store that cannot write a step in this long is treated as down (the run fails)."""


async def append_step(store: JournalStore, run_id: str, step: Step) -> None:
    """`store.append` under `JOURNAL_TIMEOUT_S`, skipped for stores that declare `bounded = True`
    (they never block; a cancel scope per step is measurable at thousands of runs)."""
    timeout = math.inf if getattr(store, "bounded", False) else JOURNAL_TIMEOUT_S
    with anyio.fail_after(timeout):
        await store.append(run_id, step)


async def read_steps(store: JournalStore, run_id: str) -> list[Step]:
    timeout = math.inf if getattr(store, "bounded", False) else JOURNAL_TIMEOUT_S
    with anyio.fail_after(timeout):
        return await store.steps(run_id)


class RunJournal:
    """One run's view of a journal store that remembers the run's steps: those read once at
    the start (none for a fresh run) plus those appended since. Only the run's owner writes its
    journal, so this is what the store holds, and the run's end needs no store read."""

    def __init__(self, store: JournalStore, run_id: str, *, fresh: bool) -> None:
        self.store = store
        self.run_id = run_id
        self.bounded = getattr(store, "bounded", False)
        self._known: list[Step] | None = [] if fresh else None

    async def append(self, run_id: str, step: Step) -> None:
        await self.store.append(run_id, step)
        if self._known is not None and run_id == self.run_id:
            self._known.append(step)

    async def steps(self, run_id: str) -> list[Step]:
        if run_id != self.run_id:
            return await self.store.steps(run_id)
        if self._known is None:
            self._known = await self.store.steps(run_id)
        return list(self._known)


class InMemoryJournalStore:
    """The default store: lives as long as the process (resume within one process, tests).
    Keeps the journals of the `max_runs` most recently written runs (oldest forgotten first), so
    a long-lived server does not grow without bound."""

    bounded = True  # never blocks: callers need no timeout around it

    def __init__(self, max_runs: int = 100_000) -> None:
        if max_runs < 1:
            raise ValueError("max_runs must be >= 1")
        self._steps: OrderedDict[str, list[Step]] = OrderedDict()
        self.max_runs = max_runs

    async def append(self, run_id: str, step: Step) -> None:
        steps = self._steps.get(run_id)
        if steps is None:
            steps = self._steps[run_id] = []
            while len(self._steps) > self.max_runs:
                self._steps.popitem(last=False)
        else:
            self._steps.move_to_end(run_id)
        steps.append(step)

    async def steps(self, run_id: str) -> list[Step]:
        return list(self._steps.get(run_id, ()))

    def run_ids(self) -> list[str]:
        return list(self._steps)

    def forget(self, run_id: str) -> None:
        self._steps.pop(run_id, None)
