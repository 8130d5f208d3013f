"""Run stores of the REST service: SQLite (embedded default) and Redis."""

from __future__ import annotations

from legato.server.store.base import (
    DuplicateError,
    EventRecord,
    ProgramRecord,
    RunRecord,
    RunStore,
    TenantRecord,
)
from legato.server.store.redis import RedisRunStore
from legato.server.store.sqlite import SqliteRunStore


def open_store(
    db_path: str | None, redis_url: str | None, redis_prefix: str = "legato:", lease_s: float = 10.0
) -> RunStore:
    """The store the configuration names (Redis when a URL is given), not yet opened."""
    if redis_url:
        return RedisRunStore(redis_url, prefix=redis_prefix, lease_s=lease_s)
    if not db_path:
        raise ValueError("give a SQLite file path (--db) or a Redis URL (--redis-url)")
    return SqliteRunStore(db_path)


__all__ = [
    "DuplicateError",
    "EventRecord",
    "ProgramRecord",
    "RedisRunStore",
    "RunRecord",
    "RunStore",
    "SqliteRunStore",
    "TenantRecord",
    "open_store",
]
