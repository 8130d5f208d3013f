"""Both run stores against real backends (an SQLite file, a redis-server): the same behaviour."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from legato.programs.journal import JournalStore, Step
from legato.server.store import (
    DuplicateError,
    EventRecord,
    ProgramRecord,
    RedisRunStore,
    RunRecord,
    RunStore,
    SqliteRunStore,
    TenantRecord,
)
from legato.server.store.base import RunStatusName


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RunStore]:
    s: RunStore
    if request.param == "sqlite":
        s = SqliteRunStore(tmp_path / "store.db")
    else:
        s = RedisRunStore(request.getfixturevalue("redis_url"), prefix=f"t{uuid.uuid4().hex[:8]}:")
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def run(
    run_id: str, tenant: str = "a", status: RunStatusName = "pending", program_id: str | None = None
) -> RunRecord:
    return RunRecord(
        id=run_id, tenant_id=tenant, program_id=program_id, program_name="p", spec={}, status=status
    )


async def test_tenants(store: RunStore) -> None:
    assert await store.count_tenants() == 0
    await store.add_tenant(TenantRecord(id="t1", name="acme", key_hash="h1", weight=2.0))
    with pytest.raises(DuplicateError):
        await store.add_tenant(TenantRecord(id="t2", name="acme", key_hash="h2"))
    found = await store.tenant_by_key_hash("h1")
    assert found is not None and found.name == "acme" and found.weight == 2.0
    assert await store.tenant_by_key_hash("h2") is None
    assert [t.name for t in await store.list_tenants()] == ["acme"]
    assert await store.remove_tenant("acme") and not await store.remove_tenant("acme")
    assert await store.tenant_by_key_hash("h1") is None and await store.count_tenants() == 0
    assert await store.meta_setdefault("k", "v1") == "v1"
    assert await store.meta_setdefault("k", "v2") == "v1"


async def test_runs_filters_pagination_and_unfinished(store: RunStore) -> None:
    ids = []
    for i in range(7):
        rec = await store.create_run(run(f"r{i}", status="running", program_id="p1" if i % 2 else "p2"))
        ids.append(rec.id)
    await store.create_run(run("other", tenant="b"))
    seqs = [(await store.get_run(i)).seq for i in ids]  # type: ignore[union-attr]
    assert seqs == sorted(seqs) and len(set(seqs)) == 7
    done = await store.get_run("r3")
    assert done is not None
    done.status, done.output = "succeeded", {"x": 1}
    await store.save_run(done)
    assert (await store.get_run("r3")).output == {"x": 1}  # type: ignore[union-attr]

    pages, cursor = [], None
    while True:
        page = await store.list_runs("a", before_seq=cursor, limit=3)
        if not page:
            break
        pages.append([r.id for r in page])
        cursor = page[-1].seq
    assert pages == [["r6", "r5", "r4"], ["r3", "r2", "r1"], ["r0"]]
    assert [r.id for r in await store.list_runs("a", status="succeeded")] == ["r3"]
    assert [r.id for r in await store.list_runs("a", program_id="p1", limit=2)] == ["r5", "r3"]
    assert [r.id for r in await store.list_runs("b")] == ["other"]
    assert {r.id for r in await store.unfinished_runs()} == {*ids, "other"} - {"r3"}


async def test_journal_and_events(store: RunStore) -> None:
    assert isinstance(store, JournalStore)
    steps = [
        Step(0, "0:a", "a", "ok", writes={"x": [1, "two"]}, next="b"),
        Step(1, "1:b:started", "b", "started"),
        Step(2, "2:b", "b", "error", error="boom", error_kind="timeout"),
    ]
    for step in steps:
        await store.append("run1", step)
    assert await store.steps("run1") == steps
    assert await store.steps("nothing") == []
    for seq in range(5):
        await store.append_events("run1", [EventRecord(seq=seq, kind="status", data={"n": seq})])
    assert [e.seq for e in await store.events("run1", after_seq=2)] == [3, 4]
    assert [e.data["n"] for e in await store.events("run1")] == [0, 1, 2, 3, 4]


async def test_programs(store: RunStore) -> None:
    for i in range(3):
        await store.put_program(
            ProgramRecord(id=f"p{i}", tenant_id="a", name="n", spec={"i": i}, created_at=i)
        )
    assert [p.id for p in await store.list_programs("a", 2)] == ["p2", "p1"]
    assert (await store.get_program("p1")).spec == {"i": 1}  # type: ignore[union-attr]
    assert await store.get_program("zzz") is None
    assert await store.list_programs("b", 10) == []


async def test_one_server_per_sqlite_file(tmp_path: Path) -> None:
    first, second = SqliteRunStore(tmp_path / "x.db"), SqliteRunStore(tmp_path / "x.db")
    first.claim()
    with pytest.raises(RuntimeError, match="another legato server is using"):
        second.claim()
    await first.close()  # releases it
    second.claim()
    await second.close()


def test_sqlite_store_serves_two_event_loops_at_once(tmp_path: Path) -> None:
    """A CLI or test thread may call the store while the server's loop is using it; the waiting
    loop must be woken when the other loop's operation ends (an anyio limiter is per loop)."""
    import threading

    import anyio

    store = SqliteRunStore(tmp_path / "store.db")
    anyio.run(store.open)
    holding, release = threading.Event(), threading.Event()

    def hold(_: object) -> None:
        holding.set()
        release.wait(10)

    server_loop = threading.Thread(target=anyio.run, args=(store._do, hold))
    server_loop.start()
    assert holding.wait(10)

    async def add_while_held() -> int:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(store.add_tenant, TenantRecord(id="t1", name="acme", key_hash="h1"))
                await anyio.sleep(0.1)  # queued behind the other loop's operation
                release.set()
            return await store.count_tenants()

    assert anyio.run(add_while_held) == 1
    server_loop.join(10)
    anyio.run(store.close)
