"""What the REST service keeps durably: tenants, programs, runs, their step journals and events.

`RunStore` is one protocol with two implementations: `SqliteRunStore` (the embedded default, one
file) and `RedisRunStore` (`--redis-url`). A store is also the executor's `JournalStore`
(`append` / `steps`), so a run's finished steps are written where its record lives and a
restarted server resumes it from them. Everything is stored as JSON, never pickle.

Servers per store: the SQLite store takes one (`claim`, an OS file lock, refuses a second) and
owns every run. The Redis store is shared by any number of instances: each run in flight is
leased by one (`claim_run`, renewed by `renew_runs`, see `redis_leases`), an owner's writes are
fenced, and a run whose owner died is claimed by another after `lease_s`. (`legato tenants` may
use the store while servers run.)
"""

from __future__ import annotations

import time
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from legato.programs.journal import Step

RunStatusName = Literal[
    "pending", "running", "waiting_for_tool", "succeeded", "failed", "cancelled", "interrupted"
]
FINISHED_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled", "interrupted"})


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TenantRecord(_Record):
    id: str
    name: str
    key_hash: str  # sha256 hex of the API key; the key itself is never stored
    weight: float = 1.0
    max_concurrent_runs: int = 64
    tokens_per_minute: int | None = None
    admin: bool = False  # may call the control plane (weights, pause / resume, abort all)
    created_at: float = Field(default_factory=time.time)


class ProgramRecord(_Record):
    id: str
    tenant_id: str
    name: str
    spec: dict[str, JsonValue]  # the ProgramSpec as JSON data
    created_at: float = Field(default_factory=time.time)


class RunRecord(_Record):
    id: str
    tenant_id: str
    program_id: str | None  # None for an inline program
    program_name: str
    spec: dict[str, JsonValue]  # kept with the run so it resumes even if the program is gone
    inputs: dict[str, JsonValue] = Field(default_factory=dict)
    metadata: dict[str, str] = Field(default_factory=dict)
    status: RunStatusName = "pending"
    output: JsonValue = None
    error: str | None = None
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    finished_at: float | None = None
    resumed: int = 0  # how many times a restarted server picked this run up again
    seq: int = 0  # creation order, assigned by the store (pagination cursor)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES


class EventRecord(_Record):
    """A run event as clients see it; `seq` is per run and survives restarts (SSE `id:`)."""

    seq: int
    kind: str
    node: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    at: float = 0.0


class DuplicateError(ValueError):
    """A record with this unique name already exists."""


@runtime_checkable
class RunStore(Protocol):
    """Durable state of the REST service. Every method returns only after the write would survive
    a crash of the server process."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise if the store cannot be reached (readiness)."""
        ...

    def claim(self) -> None:
        """Claim the store for one server (raise RuntimeError, saying why, if another has it)."""
        ...

    # -- run leases (shared stores; the SQLite store owns every run) -------------------------
    lease_s: float | None  # None: not shared, no heartbeat or takeover needed

    async def claim_run(self, run_id: str) -> bool:
        """Take the lease of a run (new, or whose owner is gone); False if another holds it."""
        ...

    async def renew_runs(self, run_ids: list[str]) -> list[str]:
        """Heartbeat: extend these leases; returns the runs this server no longer owns."""
        ...

    async def release_run(self, run_id: str) -> None: ...

    def owns(self, run_id: str) -> bool:
        """Whether this server (still) owns the run's lease (False once a write was refused)."""
        ...

    async def claimable_runs(self) -> list[RunRecord]:
        """Unfinished runs no server holds a lease on (to resume or take over)."""
        ...

    async def start_run(self, run: RunRecord, limit: int) -> RunRecord | None:
        """A new run in one step: count it against its tenant's concurrent runs across every
        server sharing the store (None when it already has `limit` in flight; the finished
        record frees the slot), lease it to this server and create its record (as
        `create_run`). One store round trip: it is most of `POST /v1/runs`'s time under load."""
        ...

    # -- meta --------------------------------------------------------------------------------
    async def meta_setdefault(self, key: str, value: str) -> str:
        """Store `value` under `key` unless one exists; return the stored value."""
        ...

    # -- tenants -----------------------------------------------------------------------------
    async def add_tenant(self, tenant: TenantRecord) -> None:
        """Raise `DuplicateError` if the name is taken."""
        ...

    async def tenant_by_key_hash(self, key_hash: str) -> TenantRecord | None: ...

    async def list_tenants(self) -> list[TenantRecord]: ...

    async def count_tenants(self) -> int: ...

    async def remove_tenant(self, name: str) -> bool: ...

    # -- programs ----------------------------------------------------------------------------
    async def put_program(self, program: ProgramRecord) -> None: ...

    async def get_program(self, program_id: str) -> ProgramRecord | None: ...

    async def list_programs(self, tenant_id: str, limit: int) -> list[ProgramRecord]: ...

    # -- runs --------------------------------------------------------------------------------
    async def create_run(self, run: RunRecord) -> RunRecord:
        """Insert; returns the record with its `seq` assigned."""
        ...

    async def save_run(self, run: RunRecord) -> None:
        """Overwrite an existing run's record."""
        ...

    async def get_run(self, run_id: str) -> RunRecord | None: ...

    async def list_runs(
        self,
        tenant_id: str,
        *,
        status: str | None = None,
        program_id: str | None = None,
        before_seq: int | None = None,
        limit: int = 50,
    ) -> list[RunRecord]:
        """Newest first; `before_seq` is the cursor (the `seq` of the last item of a page)."""
        ...

    async def unfinished_runs(self) -> list[RunRecord]: ...

    # -- journal (legato.programs.journal.JournalStore) --------------------------------------
    async def append(self, run_id: str, step: Step) -> None: ...

    async def steps(self, run_id: str) -> list[Step]: ...

    # -- events ------------------------------------------------------------------------------
    async def append_events(self, run_id: str, events: list[EventRecord]) -> None: ...

    async def events(self, run_id: str, after_seq: int = -1, limit: int = 10_000) -> list[EventRecord]: ...
