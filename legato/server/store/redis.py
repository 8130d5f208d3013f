"""`RedisRunStore`: the run store on Redis (`legato serve --redis-url`).

Keys (all under `prefix`, default `legato:`): `run:{id}` JSON string; `runs:{tenant}` sorted set
of run ids by creation seq; `runs:unfinished` set; `program:{id}` JSON; `programs:{tenant}` sorted
set; `tenant:{id}` JSON; `tenant_names` hash name -> id; `tenant_keys` hash key hash -> id;
`journal:{run}` list of step JSON; `events:{run}` sorted set of event JSON by seq; `meta` hash;
`seq` counter; `lease:{run}` and `fence:{run}` (see `redis_leases`). Writes that touch several
keys go in one MULTI/EXEC transaction; an owned run's writes are fenced Lua scripts. Several
`legato serve` instances may share one Redis (each owns the runs it leased). Durability across
a crash of *Legato* is immediate (Redis holds the data); across a crash of Redis it is whatever
the Redis server's persistence (AOF / RDB) gives.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import anyio
from redis.asyncio import BlockingConnectionPool, Redis

from legato.programs.journal import Step
from legato.server.store.base import (
    DuplicateError,
    EventRecord,
    ProgramRecord,
    RunRecord,
    TenantRecord,
)
from legato.server.store.redis_leases import RedisLeases

OP_TIMEOUT_S = 10.0
# Connections to Redis per server. Redis runs one command at a time, so connections beyond the
# commands it can have in flight only queue there instead of here; a request waits for a free one
# (the default pool fails at once with "Too many connections" under a few hundred agents).
MAX_CONNECTIONS = 128


class RedisRunStore:
    def __init__(self, url: str, *, prefix: str = "legato:", lease_s: float = 10.0) -> None:
        self.url = url
        self.prefix = prefix
        self.lease_s: float | None = lease_s  # run leases: set, this store is shared by instances
        self.instance = uuid.uuid4().hex[:12]
        self._redis: Redis | None = None
        self._leases: RedisLeases | None = None

    @property
    def leases(self) -> RedisLeases:
        if self._leases is None:
            raise RuntimeError("the Redis store is not open")
        return self._leases

    @property
    def r(self) -> Redis:
        if self._redis is None:
            raise RuntimeError("the Redis store is not open")
        return self._redis

    def k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def open(self) -> None:
        if self._redis is None:
            pool = BlockingConnectionPool.from_url(
                self.url,
                max_connections=MAX_CONNECTIONS,
                timeout=OP_TIMEOUT_S,  # waiting for a free connection, then the op's own timeout
                socket_timeout=OP_TIMEOUT_S,
                socket_connect_timeout=OP_TIMEOUT_S,
                decode_responses=True,
            )
            self._redis = Redis.from_pool(pool)
            self._leases = RedisLeases(self._redis, self.k, self.instance, self.lease_s or 10.0)
            await self.ping()

    async def close(self) -> None:
        redis, self._redis = self._redis, None
        if redis is not None:
            with anyio.move_on_after(OP_TIMEOUT_S):
                await redis.aclose()

    def claim(self) -> None:
        """No server lock: instances share the store, each run is leased (`claim_run`)."""

    # -- leases (see `redis_leases`) ------------------------------------------------------------
    async def claim_run(self, run_id: str) -> bool:
        with anyio.fail_after(OP_TIMEOUT_S):
            return await self.leases.claim(run_id)

    async def renew_runs(self, run_ids: list[str]) -> list[str]:
        with anyio.fail_after(OP_TIMEOUT_S):
            return await self.leases.renew(run_ids)

    async def release_run(self, run_id: str) -> None:
        with anyio.fail_after(OP_TIMEOUT_S):
            await self.leases.release(run_id)

    def owns(self, run_id: str) -> bool:
        return self.leases.owns(run_id)

    async def start_run(self, run: RunRecord, limit: int) -> RunRecord | None:
        """Reserve, lease and create in one script (`redis_leases._START`): the tenant's
        concurrent runs are a set of its unfinished runs, left by `save_run` of the finished
        record. The record's `seq` (its last field) is appended by the script."""
        head, tail = run.model_dump_json().rsplit('"seq":', 1)
        if tail != f"{run.seq}}}":
            raise RuntimeError("RunRecord must end with its seq field")
        keys = [self.k("active", run.tenant_id), self.k("lease", run.id), self.k("fence", run.id)]
        keys += [
            self.k("seq"),
            self.k("run", run.id),
            self.k("runs", run.tenant_id),
            self.k("runs", "unfinished"),
        ]
        with anyio.fail_after(OP_TIMEOUT_S):
            seq = await self.leases.start(run.id, keys, [limit, head + '"seq":'])
        return None if seq is None else run.model_copy(update={"seq": seq})

    async def claimable_runs(self) -> list[RunRecord]:
        """Unfinished runs nobody holds a lease on (their owner finished, stopped or died)."""
        with anyio.fail_after(OP_TIMEOUT_S):
            ids = sorted(str(i) for i in await self.r.smembers(self.k("runs", "unfinished")))
            if not ids:
                return []
            async with self.r.pipeline(transaction=False) as pipe:
                for run_id in ids:
                    pipe.exists(self.k("lease", run_id))
                leased = await pipe.execute()
            free = [i for i, held in zip(ids, leased, strict=True) if not held]
            raws = await self.r.mget([self.k("run", i) for i in free]) if free else []
        runs = [RunRecord.model_validate_json(r) for r in raws if r]
        return sorted((r for r in runs if not r.finished), key=lambda r: r.seq)

    async def ping(self) -> None:
        with anyio.fail_after(OP_TIMEOUT_S):
            await self.r.ping()

    # -- meta --------------------------------------------------------------------------------
    async def meta_setdefault(self, key: str, value: str) -> str:
        with anyio.fail_after(OP_TIMEOUT_S):
            await self.r.hsetnx(self.k("meta"), key, value)
            stored = await self.r.hget(self.k("meta"), key)
        return str(stored)

    # -- tenants -----------------------------------------------------------------------------
    async def add_tenant(self, tenant: TenantRecord) -> None:
        with anyio.fail_after(OP_TIMEOUT_S):
            if not await self.r.hsetnx(self.k("tenant_names"), tenant.name, tenant.id):
                raise DuplicateError(f"a tenant named {tenant.name!r} already exists")
            async with self.r.pipeline(transaction=True) as pipe:
                pipe.set(self.k("tenant", tenant.id), tenant.model_dump_json())
                pipe.hset(self.k("tenant_keys"), tenant.key_hash, tenant.id)
                await pipe.execute()

    async def _tenant(self, tenant_id: str) -> TenantRecord | None:
        raw = await self.r.get(self.k("tenant", tenant_id))
        return TenantRecord.model_validate_json(raw) if raw else None

    async def tenant_by_key_hash(self, key_hash: str) -> TenantRecord | None:
        with anyio.fail_after(OP_TIMEOUT_S):
            tid = await self.r.hget(self.k("tenant_keys"), key_hash)
            return await self._tenant(str(tid)) if tid else None

    async def list_tenants(self) -> list[TenantRecord]:
        with anyio.fail_after(OP_TIMEOUT_S):
            ids = await self.r.hvals(self.k("tenant_names"))
            found = [await self._tenant(str(i)) for i in ids]
        return sorted((t for t in found if t is not None), key=lambda t: t.name)

    async def count_tenants(self) -> int:
        with anyio.fail_after(OP_TIMEOUT_S):
            return int(await self.r.hlen(self.k("tenant_names")))

    async def remove_tenant(self, name: str) -> bool:
        with anyio.fail_after(OP_TIMEOUT_S):
            tid = await self.r.hget(self.k("tenant_names"), name)
            if not tid:
                return False
            tenant = await self._tenant(str(tid))
            async with self.r.pipeline(transaction=True) as pipe:
                pipe.hdel(self.k("tenant_names"), name)
                pipe.delete(self.k("tenant", str(tid)))
                if tenant is not None:
                    pipe.hdel(self.k("tenant_keys"), tenant.key_hash)
                await pipe.execute()
        return True

    # -- programs ----------------------------------------------------------------------------
    async def put_program(self, program: ProgramRecord) -> None:
        with anyio.fail_after(OP_TIMEOUT_S):
            async with self.r.pipeline(transaction=True) as pipe:
                pipe.set(self.k("program", program.id), program.model_dump_json())
                pipe.zadd(self.k("programs", program.tenant_id), {program.id: program.created_at})
                await pipe.execute()

    async def get_program(self, program_id: str) -> ProgramRecord | None:
        with anyio.fail_after(OP_TIMEOUT_S):
            raw = await self.r.get(self.k("program", program_id))
        return ProgramRecord.model_validate_json(raw) if raw else None

    async def list_programs(self, tenant_id: str, limit: int) -> list[ProgramRecord]:
        with anyio.fail_after(OP_TIMEOUT_S):
            ids = await self.r.zrevrange(self.k("programs", tenant_id), 0, max(0, limit - 1))
            raws = await self.r.mget([self.k("program", str(i)) for i in ids]) if ids else []
        return [ProgramRecord.model_validate_json(r) for r in raws if r]

    # -- runs --------------------------------------------------------------------------------
    async def create_run(self, run: RunRecord) -> RunRecord:
        with anyio.fail_after(OP_TIMEOUT_S):
            seq = int(await self.r.incr(self.k("seq")))
            stored = run.model_copy(update={"seq": seq})
            async with self.r.pipeline(transaction=True) as pipe:
                pipe.set(self.k("run", run.id), stored.model_dump_json())
                pipe.zadd(self.k("runs", run.tenant_id), {run.id: seq})
                if not stored.finished:
                    pipe.sadd(self.k("runs", "unfinished"), run.id)
                await pipe.execute()
        return stored

    async def save_run(self, run: RunRecord) -> None:
        """Fenced for an owned run; a finished record is never overwritten (StaleOwnerError)."""
        keys = [self.k("fence", run.id), self.k("run", run.id), self.k("runs", "unfinished")]
        keys.append(self.k("active", run.tenant_id))
        args: list[str | int] = [self.leases.token(run.id), run.model_dump_json(), run.id, int(run.finished)]
        with anyio.fail_after(OP_TIMEOUT_S):
            done = await self.leases.save_run(keys=keys, args=args)
        if done == 0:
            raise self.leases.refused(run.id, "saving the run")
        if done == -1:
            raise self.leases.refused(run.id, "overwriting the finished run")

    async def get_run(self, run_id: str) -> RunRecord | None:
        with anyio.fail_after(OP_TIMEOUT_S):
            raw = await self.r.get(self.k("run", run_id))
        return RunRecord.model_validate_json(raw) if raw else None

    async def list_runs(
        self,
        tenant_id: str,
        *,
        status: str | None = None,
        program_id: str | None = None,
        before_seq: int | None = None,
        limit: int = 50,
    ) -> list[RunRecord]:
        """Walks the tenant's runs newest first in batches, filtering here (bounded by `limit`
        matches; a filter that matches little scans more of the index)."""
        out: list[RunRecord] = []
        top: str = f"({before_seq}" if before_seq is not None else "+inf"
        with anyio.fail_after(OP_TIMEOUT_S):
            while len(out) < limit:
                batch: list[Any] = await self.r.zrevrangebyscore(
                    self.k("runs", tenant_id), top, "-inf", start=0, num=max(limit, 100), withscores=True
                )
                if not batch:
                    break
                raws = await self.r.mget([self.k("run", str(rid)) for rid, _ in batch])
                for raw in raws:
                    if not raw:
                        continue
                    run = RunRecord.model_validate_json(raw)
                    if (status is None or run.status == status) and (
                        program_id is None or run.program_id == program_id
                    ):
                        out.append(run)
                        if len(out) >= limit:
                            break
                top = f"({int(batch[-1][1])}"
        return out

    async def unfinished_runs(self) -> list[RunRecord]:
        with anyio.fail_after(OP_TIMEOUT_S):
            ids = await self.r.smembers(self.k("runs", "unfinished"))
            raws = await self.r.mget([self.k("run", str(i)) for i in ids]) if ids else []
        runs = [RunRecord.model_validate_json(r) for r in raws if r]
        return sorted((r for r in runs if not r.finished), key=lambda r: r.seq)

    # -- journal -----------------------------------------------------------------------------
    async def append(self, run_id: str, step: Step) -> None:
        keys = [self.k("fence", run_id), self.k("journal", run_id)]
        args = [self.leases.token(run_id), json.dumps(step.to_dict(), default=str)]
        with anyio.fail_after(OP_TIMEOUT_S):
            if not await self.leases.append_step(keys=keys, args=args):
                raise self.leases.refused(run_id, "journaling a step")

    async def steps(self, run_id: str) -> list[Step]:
        with anyio.fail_after(OP_TIMEOUT_S):
            raws = await self.r.lrange(self.k("journal", run_id), 0, -1)
        return [Step.from_dict(json.loads(r)) for r in raws]

    # -- events ------------------------------------------------------------------------------
    async def append_events(self, run_id: str, events: list[EventRecord]) -> None:
        """One fenced script call for a batch of events."""
        keys = [self.k("fence", run_id), self.k("events", run_id)]
        args: list[str | int] = [self.leases.token(run_id)]
        for event in events:
            args += [event.seq, event.model_dump_json()]
        with anyio.fail_after(OP_TIMEOUT_S):
            if not await self.leases.append_events(keys=keys, args=args):
                raise self.leases.refused(run_id, "recording an event")

    async def events(self, run_id: str, after_seq: int = -1, limit: int = 10_000) -> list[EventRecord]:
        with anyio.fail_after(OP_TIMEOUT_S):
            raws: list[Any] = await self.r.zrangebyscore(
                self.k("events", run_id), f"({after_seq}", "+inf", start=0, num=limit
            )
        return [EventRecord.model_validate_json(r) for r in raws]
