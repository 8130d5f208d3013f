"""`SqliteRunStore`: the embedded default run store, one SQLite file.

All access goes through one connection on worker threads, one operation at a time, so the event
loop never blocks on disk. Each event loop queues its operations in order (a capacity limiter of 1
per loop: a run's status writes land in the order it made them), and a thread lock around the
connection serialises loops against each other (a test or CLI thread may call the store while the
server's loop runs; an anyio limiter only wakes waiters of its own loop, `legato.loop_local`).

WAL mode with `synchronous=NORMAL`: a committed write survives a crash of the server process
(`kill -9`); `durable=True` switches to `synchronous=FULL` to also survive power loss. Other
processes (`legato tenants add`) may write the same file while a server runs.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio

from legato.loop_local import PerLoop
from legato.programs.journal import Step
from legato.server.store.base import (
    DuplicateError,
    EventRecord,
    ProgramRecord,
    RunRecord,
    TenantRecord,
)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tenants (
    id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, key_hash TEXT NOT NULL UNIQUE, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS programs (
    id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, created_at REAL NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS programs_tenant ON programs (tenant_id, created_at);
CREATE TABLE IF NOT EXISTS runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, tenant_id TEXT NOT NULL,
    program_id TEXT, status TEXT NOT NULL, finished INTEGER NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS runs_tenant ON runs (tenant_id, seq);
CREATE INDEX IF NOT EXISTS runs_unfinished ON runs (finished);
CREATE TABLE IF NOT EXISTS steps (
    n INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS steps_run ON steps (run_id, n);
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL, seq INTEGER NOT NULL, data TEXT NOT NULL, PRIMARY KEY (run_id, seq));
"""

OP_TIMEOUT_S = 30.0


class SqliteRunStore:
    def __init__(self, path: Path | str, *, durable: bool = False) -> None:
        self.path = Path(path)
        self.durable = durable
        self._conn: sqlite3.Connection | None = None
        self._limiter = PerLoop(lambda: anyio.CapacityLimiter(1))
        self._conn_lock = threading.Lock()
        self._lock_fd: int | None = None

    # -- plumbing ----------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=OP_TIMEOUT_S, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
        conn.executescript(_SCHEMA)
        return conn

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        """Run `fn` on a worker thread, after this loop's earlier operations and alone on the
        connection. sqlite's own busy timeout bounds the thread; it cannot be cancelled."""

        def locked() -> T:
            with self._conn_lock:
                return fn()

        return await anyio.to_thread.run_sync(locked, limiter=self._limiter.get())

    async def _do(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise RuntimeError("the SQLite store is not open")

        def call() -> T:
            with conn:  # one transaction per operation
                return fn(conn)

        return await self._in_thread(call)

    async def open(self) -> None:
        if self._conn is None:
            self._conn = await self._in_thread(self._connect)

    def claim(self) -> None:
        """Take the server lock (`<db>.lock`, an OS file lock the kernel drops even on kill -9):
        a second server on the same file would resume the same runs twice."""
        if self._lock_fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(
                f"another legato server is using {self.path}; stop it or give this one another --db"
            ) from None
        self._lock_fd = fd

    # -- leases: one server per file (`claim`), so it owns every run --------------------------
    lease_s: float | None = None

    async def claim_run(self, run_id: str) -> bool:
        return True

    async def renew_runs(self, run_ids: list[str]) -> list[str]:
        return []

    async def release_run(self, run_id: str) -> None:
        return None

    def owns(self, run_id: str) -> bool:
        return True

    async def claimable_runs(self) -> list[RunRecord]:
        return await self.unfinished_runs()

    async def start_run(self, run: RunRecord, limit: int) -> RunRecord | None:
        return await self.create_run(run)  # one server: its own `QuotaTracker` counts every run

    async def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the lock
            self._lock_fd = None
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._in_thread(conn.close)

    async def ping(self) -> None:
        await self._do(lambda c: c.execute("SELECT 1").fetchone())

    # -- meta --------------------------------------------------------------------------------
    async def meta_setdefault(self, key: str, value: str) -> str:
        def op(c: sqlite3.Connection) -> str:
            c.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))
            row = c.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return str(row[0])

        return await self._do(op)

    # -- tenants -----------------------------------------------------------------------------
    async def add_tenant(self, tenant: TenantRecord) -> None:
        def op(c: sqlite3.Connection) -> None:
            try:
                c.execute(
                    "INSERT INTO tenants (id, name, key_hash, data) VALUES (?, ?, ?, ?)",
                    (tenant.id, tenant.name, tenant.key_hash, tenant.model_dump_json()),
                )
            except sqlite3.IntegrityError:
                raise DuplicateError(f"a tenant named {tenant.name!r} already exists") from None

        await self._do(op)

    async def tenant_by_key_hash(self, key_hash: str) -> TenantRecord | None:
        row = await self._do(
            lambda c: c.execute("SELECT data FROM tenants WHERE key_hash = ?", (key_hash,)).fetchone()
        )
        return TenantRecord.model_validate_json(row[0]) if row else None

    async def list_tenants(self) -> list[TenantRecord]:
        rows = await self._do(lambda c: c.execute("SELECT data FROM tenants ORDER BY name").fetchall())
        return [TenantRecord.model_validate_json(r[0]) for r in rows]

    async def count_tenants(self) -> int:
        row = await self._do(lambda c: c.execute("SELECT COUNT(*) FROM tenants").fetchone())
        return int(row[0])

    async def remove_tenant(self, name: str) -> bool:
        cur = await self._do(lambda c: c.execute("DELETE FROM tenants WHERE name = ?", (name,)))
        return cur.rowcount > 0

    # -- programs ----------------------------------------------------------------------------
    async def put_program(self, program: ProgramRecord) -> None:
        await self._do(
            lambda c: c.execute(
                "INSERT OR REPLACE INTO programs (id, tenant_id, created_at, data) VALUES (?, ?, ?, ?)",
                (program.id, program.tenant_id, program.created_at, program.model_dump_json()),
            )
        )

    async def get_program(self, program_id: str) -> ProgramRecord | None:
        row = await self._do(
            lambda c: c.execute("SELECT data FROM programs WHERE id = ?", (program_id,)).fetchone()
        )
        return ProgramRecord.model_validate_json(row[0]) if row else None

    async def list_programs(self, tenant_id: str, limit: int) -> list[ProgramRecord]:
        rows = await self._do(
            lambda c: c.execute(
                "SELECT data FROM programs WHERE tenant_id = ? ORDER BY created_at DESC LIMIT ?",
                (tenant_id, limit),
            ).fetchall()
        )
        return [ProgramRecord.model_validate_json(r[0]) for r in rows]

    # -- runs --------------------------------------------------------------------------------
    @staticmethod
    def _run_row(run: RunRecord) -> tuple[Any, ...]:
        return (run.tenant_id, run.program_id, run.status, int(run.finished), run.model_dump_json())

    async def create_run(self, run: RunRecord) -> RunRecord:
        def op(c: sqlite3.Connection) -> RunRecord:
            cur = c.execute(
                "INSERT INTO runs (id, tenant_id, program_id, status, finished, data) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (run.id, *self._run_row(run)),
            )
            seq = int(cur.lastrowid or 0)
            stored = run.model_copy(update={"seq": seq})
            c.execute("UPDATE runs SET data = ? WHERE seq = ?", (stored.model_dump_json(), seq))
            return stored

        return await self._do(op)

    async def save_run(self, run: RunRecord) -> None:
        await self._do(
            lambda c: c.execute(
                "UPDATE runs SET tenant_id = ?, program_id = ?, status = ?, finished = ?, data = ? "
                "WHERE id = ?",
                (*self._run_row(run), run.id),
            )
        )

    async def get_run(self, run_id: str) -> RunRecord | None:
        row = await self._do(lambda c: c.execute("SELECT data FROM runs WHERE id = ?", (run_id,)).fetchone())
        return RunRecord.model_validate_json(row[0]) if row else None

    async def list_runs(
        self,
        tenant_id: str,
        *,
        status: str | None = None,
        program_id: str | None = None,
        before_seq: int | None = None,
        limit: int = 50,
    ) -> list[RunRecord]:
        sql = "SELECT data FROM runs WHERE tenant_id = ?"
        args: list[Any] = [tenant_id]
        if status is not None:
            sql += " AND status = ?"
            args.append(status)
        if program_id is not None:
            sql += " AND program_id = ?"
            args.append(program_id)
        if before_seq is not None:
            sql += " AND seq < ?"
            args.append(before_seq)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit)
        rows = await self._do(lambda c: c.execute(sql, args).fetchall())
        return [RunRecord.model_validate_json(r[0]) for r in rows]

    async def unfinished_runs(self) -> list[RunRecord]:
        rows = await self._do(
            lambda c: c.execute("SELECT data FROM runs WHERE finished = 0 ORDER BY seq").fetchall()
        )
        return [RunRecord.model_validate_json(r[0]) for r in rows]

    # -- journal -----------------------------------------------------------------------------
    async def append(self, run_id: str, step: Step) -> None:
        data = json.dumps(step.to_dict(), default=str)
        await self._do(lambda c: c.execute("INSERT INTO steps (run_id, data) VALUES (?, ?)", (run_id, data)))

    async def steps(self, run_id: str) -> list[Step]:
        rows = await self._do(
            lambda c: c.execute("SELECT data FROM steps WHERE run_id = ? ORDER BY n", (run_id,)).fetchall()
        )
        return [Step.from_dict(json.loads(r[0])) for r in rows]

    # -- events ------------------------------------------------------------------------------
    async def append_events(self, run_id: str, events: list[EventRecord]) -> None:
        rows = [(run_id, e.seq, e.model_dump_json()) for e in events]
        await self._do(
            lambda c: c.executemany(
                "INSERT OR REPLACE INTO events (run_id, seq, data) VALUES (?, ?, ?)", rows
            )
        )

    async def events(self, run_id: str, after_seq: int = -1, limit: int = 10_000) -> list[EventRecord]:
        rows = await self._do(
            lambda c: c.execute(
                "SELECT data FROM events WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (run_id, after_seq, limit),
            ).fetchall()
        )
        return [EventRecord.model_validate_json(r[0]) for r in rows]
