"""Run leases, fencing and the shared concurrent-runs quota of the Redis store: two store
objects (two instances) on one real redis-server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import anyio
import pytest

from legato.programs.journal import Step
from legato.server.store import EventRecord, RedisRunStore, RunRecord
from legato.server.store.redis_leases import StaleOwnerError

# Long enough that no stall of a loaded machine between two store calls outlives a lease (which
# would let B claim a run A still holds); the expiry test waits for it to run out.
LEASE_S = 2.0


@pytest.fixture
async def pair(redis_url: str) -> AsyncIterator[tuple[RedisRunStore, RedisRunStore]]:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    a, b = (RedisRunStore(redis_url, prefix=prefix, lease_s=LEASE_S) for _ in range(2))
    await a.open()
    await b.open()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


def record(run_id: str) -> RunRecord:
    return RunRecord(id=run_id, tenant_id="t", program_id=None, program_name="p", spec={})


async def test_a_lease_is_exclusive_until_it_expires_then_the_old_owner_is_fenced(
    pair: tuple[RedisRunStore, RedisRunStore],
) -> None:
    a, b = pair
    assert await a.claim_run("r1")
    await a.create_run(record("r1"))
    assert not await b.claim_run("r1")
    assert [r.id for r in await b.claimable_runs()] == []
    assert await a.renew_runs(["r1"]) == []  # the heartbeat keeps it
    with anyio.fail_after(LEASE_S + 30):  # no heartbeat: the lease expires
        while not await b.claimable_runs():  # noqa: ASYNC110 - Redis expires it, nothing signals
            await anyio.sleep(0.05)
    assert [r.id for r in await b.claimable_runs()] == ["r1"]
    assert await b.claim_run("r1")
    running = record("r1").model_copy(update={"status": "running"})
    with pytest.raises(StaleOwnerError):
        await a.save_run(running)
    with pytest.raises(StaleOwnerError):
        await a.append("r1", Step(0, "0:n", "n", "ok"))
    with pytest.raises(StaleOwnerError):
        await a.append_events("r1", [EventRecord(seq=0, kind="status")])
    assert not a.owns("r1") and b.owns("r1")
    assert await a.renew_runs(["r1"]) == ["r1"]
    await b.save_run(running)
    await b.append("r1", Step(0, "0:n", "n", "ok"))
    assert [s.node for s in await b.steps("r1")] == ["n"]


async def test_a_finished_record_is_never_overwritten(pair: tuple[RedisRunStore, RedisRunStore]) -> None:
    a, b = pair
    assert await a.claim_run("r2")
    await a.create_run(record("r2"))
    await b.save_run(record("r2").model_copy(update={"status": "cancelled"}))  # a cancel via B
    with pytest.raises(StaleOwnerError):
        await a.save_run(record("r2").model_copy(update={"status": "succeeded"}))
    stored = await b.get_run("r2")
    assert stored is not None and stored.status == "cancelled"


async def test_released_runs_are_claimable_at_once(pair: tuple[RedisRunStore, RedisRunStore]) -> None:
    a, b = pair
    assert await a.claim_run("r3")
    await a.create_run(record("r3"))
    await a.release_run("r3")
    assert await b.claim_run("r3")


async def test_a_run_released_during_a_heartbeat_is_not_reported_lost(
    pair: tuple[RedisRunStore, RedisRunStore],
) -> None:
    """A run that finishes while the heartbeat renews the live runs gave its lease up: the
    heartbeat must not log it as lost (under load that was a warning per finished run)."""
    a, _ = pair
    for run_id in ("f1", "f2"):
        assert await a.claim_run(run_id)
        await a.create_run(record(run_id))
    async with anyio.create_task_group() as tg:  # release f1 while the renewal is in flight
        tg.start_soon(a.release_run, "f1")
        lost = await a.renew_runs(["f1", "f2"])
    assert lost == [] and a.owns("f2") and not a.owns("f1")
    assert await a.renew_runs(["f1", "f2"]) == []  # released and forgotten: still not lost


async def test_the_concurrent_runs_quota_counts_every_instance(
    pair: tuple[RedisRunStore, RedisRunStore],
) -> None:
    a, b = pair
    assert await a.start_run(record("x1"), 3)
    assert await b.start_run(record("x2"), 3)
    assert await a.start_run(record("x3"), 3)
    assert await b.start_run(record("x4"), 3) is None
    assert await b.get_run("x4") is None and not await b.claim_run("x1")  # created and leased
    assert await b.start_run(record("y1").model_copy(update={"tenant_id": "other"}), 3)  # per tenant
    await a.save_run(record("x1").model_copy(update={"status": "succeeded"}))  # frees a slot
    started = await b.start_run(record("x4"), 3)
    assert started is not None and started.seq > 0 and b.owns("x4")
    assert await b.get_run("x4") == started
    assert [r.id for r in await a.list_runs("t")] == ["x4", "x3", "x2", "x1"]
