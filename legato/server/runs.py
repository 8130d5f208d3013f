"""`RunManager`: REST-submitted runs from request to durable record.

For each run it (1) checks quotas and input limits, (2) writes a `RunRecord` (`pending`), (3)
submits the program to the shared `Executor` with the authenticated tenant, and (4) records the
run's events: every event gets a per-run sequence number (the SSE `id:`), non-token events are
persisted (so `Last-Event-ID` resumes across restarts), all are fanned out to live listeners.
The record's status follows the run; its output and error are written before `run_finished` is
published, so a client that saw `run_finished` reads a finished run.

On startup `resume_unfinished` resubmits every run the store still shows in flight, under the
same run id: the executor replays its journal and continues after the last finished step.
On shutdown runs are cancelled *without* marking them cancelled, so the next server resumes them.

A shared store (Redis, several instances): a run is driven by the instance holding its lease
(`RunStore.claim_run`). `keep_leases` renews them and takes over runs whose owner's lease expired
(it died) or was released (it stopped), see `legato.server.leases`; a run whose lease this
instance lost is stopped here without another write (its writes are fenced in the store anyway).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import TaskGroup

from legato.engine_adapter.mailbox import Mailbox
from legato.programs.builder import CompiledProgram
from legato.programs.events import RunEvent
from legato.programs.executor import Executor, RunHandle
from legato.programs.prompt import PromptRenderer
from legato.programs.spec import LLMNodeSpec, ProgramSpec
from legato.programs.state import State, StateError
from legato.programs.validate import ProgramValidationError, validate
from legato.server.auth import QuotaTracker, Tenant
from legato.server.config import Limits
from legato.server.errors import ApiError
from legato.server.leases import keep_leases
from legato.server.live_runs import LiveRun, event_batch, publish, send_ready
from legato.server.store.base import EventRecord, RunRecord, RunStore
from legato.server.store.redis_leases import StaleOwnerError

log = logging.getLogger(__name__)

RECORDER_BUFFER = 100_000  # events buffered between the executor and the recorder of one run
RESULT_TIMEOUT_S = 30.0
SHUTDOWN_TIMEOUT_S = 30.0
EVENT_PAGE = 5000


def jsonable(value: Any) -> Any:
    """Plain JSON data (anything else becomes its str), as stored and sent to clients."""
    return json.loads(json.dumps(value, default=str))


_SCALARS = frozenset((str, int, float, bool, type(None)))


def plain(data: dict[str, Any]) -> dict[str, Any]:
    """`jsonable` of an event's data, skipping the JSON round trip for the common flat case
    (a `token` event's `{"text": ...}`: one per generated token)."""
    if all(type(k) is str and type(v) in _SCALARS for k, v in data.items()):
        return dict(data)
    result: dict[str, Any] = jsonable(data)
    return result


def compile_spec(spec: ProgramSpec, registry: Any) -> CompiledProgram:
    """Validate against the server's tool registry; 422 with the validator's issues."""
    try:
        return CompiledProgram(spec, validate(spec, registry))
    except ProgramValidationError as exc:
        raise ApiError(422, str(exc), param="program") from None


class RunManager:
    def __init__(
        self,
        store: RunStore,
        executor: Executor,
        quotas: QuotaTracker,
        limits: Limits,
        registry: Any,
        max_model_len: int | None,
        set_weight: Callable[[str, float], None] | None = None,
    ) -> None:
        self.store = store
        self.executor = executor
        # Told (status, seconds from creation) when a run finishes: the /metrics TCT histogram.
        self.on_finished: Callable[[str, float], None] | None = None
        self.quotas = quotas
        self.limits = limits
        self.registry = registry
        self.max_model_len = max_model_len
        self.set_weight = set_weight or (lambda tenant_id, weight: None)
        self.renderer = PromptRenderer(executor.scheduler.tokenizer)
        self.live: dict[str, LiveRun] = {}
        self.shutting_down = False
        self.draining = False  # a graceful drain: admit no new run (see `drain`)
        self._user_cancelled: set[str] = set()
        self._tg: TaskGroup | None = None
        self._lease_scope: anyio.CancelScope | None = None  # the lease loop's (shared stores)

    async def __aenter__(self) -> RunManager:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        if self.store.lease_s is not None:
            self._lease_scope = anyio.CancelScope()
            self._tg.start_soon(keep_leases, self, self._lease_scope, self.store.lease_s, name="run leases")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        """Stop every run without finishing its record (the next server resumes it)."""
        self.shutting_down = True
        for run_id in list(self.live):
            self.executor.cancel(run_id)
        assert self._tg is not None
        tg, self._tg = self._tg, None
        if self._lease_scope is not None:
            self._lease_scope.cancel()
        # runs were cancelled above; a recorder stuck on a dead store must not hold shutdown forever
        tg.cancel_scope.deadline = anyio.current_time() + SHUTDOWN_TIMEOUT_S
        return await tg.__aexit__(exc_type, exc, tb)

    # -- checks ------------------------------------------------------------------------------
    def check_inputs(self, compiled: CompiledProgram, inputs: Mapping[str, Any]) -> None:
        """Unknown variables, over-long strings, and an entry prompt the engine cannot hold: 422."""
        limit = self.limits.max_prompt_chars
        for name, value in inputs.items():
            if isinstance(value, str) and len(value) > limit:
                raise ApiError(
                    422,
                    f"input {name!r} is {len(value)} characters; the limit is {limit} "
                    "(max_prompt_chars): shorten it",
                    param=f"inputs.{name}",
                )
        state = State(compiled.spec.state)
        try:
            state.set_inputs(inputs)
        except StateError as exc:
            raise ApiError(422, str(exc), param="inputs") from None
        entry = compiled.graph.nodes.get(compiled.spec.entry)
        if not isinstance(entry, LLMNodeSpec) or self.max_model_len is None:
            return
        try:
            prompt = self.renderer.render_spec(entry.prompt, compiled.spec.prefix_parts, state.values())
        except Exception:  # rendering problems surface as the run's own step error
            return
        need = len(prompt.token_ids) + entry.max_tokens
        if need > self.max_model_len:
            raise ApiError(
                422,
                f"node {entry.name!r}: prompt of {len(prompt.token_ids)} tokens + max_tokens "
                f"{entry.max_tokens} exceeds the engine's max_model_len of {self.max_model_len}; "
                "shorten the inputs or prefix parts, or lower max_tokens",
                param="inputs",
            )

    # -- starting ----------------------------------------------------------------------------
    async def start(
        self,
        tenant: Tenant,
        spec: ProgramSpec,
        program_id: str | None,
        inputs: dict[str, Any],
        metadata: dict[str, str],
    ) -> RunRecord:
        compiled = compile_spec(spec, self.registry)
        self.check_inputs(compiled, inputs)
        self.quotas.check_run_start(tenant)
        if self._tg is None or self.shutting_down or self.draining:
            raise ApiError(503, "the server is not accepting runs right now (starting or stopping)")
        record = RunRecord(
            id="run_" + uuid.uuid4().hex,
            tenant_id=tenant.id,
            program_id=program_id,
            program_name=spec.name,
            spec=spec.model_dump(mode="json"),
            inputs=jsonable(inputs),
            metadata=metadata,
        )
        self.set_weight(tenant.id, tenant.weight)
        self.quotas.active[tenant.id] += 1  # counted before the first await: no quota race
        try:
            created = await self.store.start_run(record, tenant.max_concurrent_runs)
            if created is None:  # at the limit counting every instance's runs
                self.quotas.check_run_start(tenant, running=tenant.max_concurrent_runs)
        except BaseException:
            self.quotas.active[tenant.id] -= 1
            raise
        assert created is not None  # check_run_start raised otherwise
        record = created
        self._launch(record, compiled, next_seq=0)
        log.info("run started", extra={"run_id": record.id, "program_id": program_id, "tenant": tenant.id})
        return record

    def _launch(self, record: RunRecord, compiled: CompiledProgram, next_seq: int) -> None:
        assert self._tg is not None
        live = LiveRun(record, next_seq, listener_limit=self.limits.max_event_buffer)
        self.live[record.id] = live
        self._tg.start_soon(self._drive, live, compiled, name=f"drive:{record.id}")

    async def resume_unfinished(self) -> int:
        """Resubmit every run the store shows in flight (after a restart); returns how many."""
        count = 0
        for listed in await self.store.claimable_runs():
            if listed.id in self.live or self._tg is None or self.shutting_down or self.draining:
                continue
            if not await self.store.claim_run(listed.id):
                continue  # another instance was first
            record = await self.store.get_run(listed.id)  # as it is now that we own it
            if record is None or record.finished:
                await self.store.release_run(listed.id)
                continue
            try:
                compiled = compile_spec(ProgramSpec.model_validate(record.spec), self.registry)
            except (ApiError, ValueError) as exc:
                message = exc.message if isinstance(exc, ApiError) else str(exc)
                record.status, record.error = "failed", f"cannot resume: {message}"
                record.finished_at = record.updated_at = time.time()
                await self.store.save_run(record)
                continue
            next_seq = await self._next_seq(record.id)
            record.resumed += 1
            self.quotas.active[record.tenant_id] += 1
            self._launch(record, compiled, next_seq=next_seq)
            log.info("run resumed", extra={"run_id": record.id, "program_id": record.program_id})
            count += 1
        return count

    # -- one run -----------------------------------------------------------------------------
    async def _drive(self, live: LiveRun, compiled: CompiledProgram) -> None:
        record = live.record
        run_id = record.id
        try:
            record.status, record.updated_at = "running", time.time()
            await self.store.save_run(record)
            sub = self.executor.subscribe(run_id, max_buffer=RECORDER_BUFFER)
            sub.direct = lambda event: self._record_token(live, event)
            handle = self.executor.submit(
                compiled, record.inputs, run_id=run_id, tenant=record.tenant_id,
                timeout_s=self.limits.run_timeout_s, fresh=record.resumed == 0,
            )  # fmt: skip
            async with sub:
                async for event in sub:
                    if not await self._record(live, handle, event_batch(event, sub.receive)):
                        break  # suspended: leave the record in flight, the next server resumes it
            if not record.finished:  # the subscription ended without run_finished (dropped)
                await self._finish(record, handle)
        except StaleOwnerError as exc:  # another instance owns the run now: it writes, not us
            log.warning("%s", exc, extra={"run_id": run_id})
            self.executor.cancel(run_id)
        except Exception as exc:
            log.exception("run %s: recording failed", run_id, extra={"run_id": run_id})
            self.executor.cancel(run_id)  # no run goes on unrecorded
            if not record.finished and not self.shutting_down and self.store.owns(run_id):
                record.status, record.error = "failed", f"internal error while recording the run: {exc}"
                record.finished_at = record.updated_at = time.time()
                with anyio.CancelScope(shield=True), anyio.move_on_after(RESULT_TIMEOUT_S):
                    await self.store.save_run(record)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(RESULT_TIMEOUT_S):
                try:  # finished, or suspended: another instance may take it over at once
                    await self.store.release_run(run_id)
                except Exception:  # the lease then expires on its own
                    log.warning("run %s: releasing its lease failed", run_id, exc_info=True)
            self.live.pop(run_id, None)
            self.quotas.active[record.tenant_id] -= 1
            self._user_cancelled.discard(run_id)
            for listener in live.listeners:
                listener.close()
            live.done.set()

    async def _finish(self, record: RunRecord, handle: RunHandle) -> bool:
        """Write the finished run's record (before `run_finished` is published to clients).
        False when the server is shutting down: the record stays in flight for the next one."""
        result = await handle.wait(RESULT_TIMEOUT_S)
        if self._suspended(record.id):
            return False
        record.status = result.status.value  # type: ignore[assignment]
        record.output = jsonable(result.output)
        record.error = result.error
        record.finished_at = record.updated_at = time.time()
        await self.store.save_run(record)
        if self.on_finished is not None:
            self.on_finished(record.status, record.finished_at - record.created_at)
        log.info(
            "run finished %s", record.status, extra={"run_id": record.id, "program_id": record.program_id}
        )
        return True

    async def _next_seq(self, run_id: str) -> int:
        """One past the last stored event seq of a run (paging through long histories)."""
        last = -1
        while True:
            page = await self.store.events(run_id, after_seq=last, limit=EVENT_PAGE)
            if not page:
                return last + 1
            last = page[-1].seq
            if len(page) < EVENT_PAGE:
                return last + 1

    def _suspended(self, run_id: str) -> bool:
        """Leave the record in flight: the server stops (not a user's cancel), or another
        instance owns the run now."""
        return (self.shutting_down and run_id not in self._user_cancelled) or not self.store.owns(run_id)

    async def _record(self, live: LiveRun, handle: RunHandle, events: list[RunEvent]) -> bool:
        """Store (all but `token`s) and then fan out a batch of the run's events, in order.
        The record is written before `run_finished` goes out; False when the run is suspended
        at its end (the record stays in flight)."""
        record = live.record
        stored: list[EventRecord] = []  # not yet written
        ready: list[EventRecord] = []  # not yet sent to listeners (after `stored` is written)
        for event in events:
            if event.kind == "run_finished":
                await publish(self.store, live, stored, ready)
                if not await self._finish(record, handle):
                    return False
            if self._suspended(record.id):
                continue
            rec = self._numbered(live, event)
            ready.append(rec)
            if event.kind == "token":
                continue
            stored.append(rec)
            status = rec.data.get("status")
            if (
                event.kind == "status"
                and status in ("running", "waiting_for_tool")
                and record.status != status
            ):
                await publish(self.store, live, stored, ready)
                record.status, record.updated_at = status, time.time()
                await self.store.save_run(record)
        await publish(self.store, live, stored, ready)
        return True

    def _record_token(self, live: LiveRun, event: RunEvent) -> None:
        """A token published while the recorder waits with nothing queued: numbered and sent to
        the listeners in the publishing task (tokens are not stored), one task switch less per
        token than through `_record`."""
        if not self._suspended(live.record.id):
            send_ready(live, [self._numbered(live, event)])

    @staticmethod
    def _numbered(live: LiveRun, event: RunEvent) -> EventRecord:
        """The event with the run's next seq (its SSE `id:`)."""
        rec = EventRecord.model_construct(
            seq=live.next_seq, kind=event.kind, node=event.node, data=plain(event.data), at=event.at
        )
        live.next_seq += 1
        return rec

    # -- control -----------------------------------------------------------------------------
    def listen(
        self, run_id: str, after_seq: int, keepalive_s: float
    ) -> tuple[list[EventRecord] | None, Mailbox[EventRecord] | None]:
        """For a live run: the recent events after `after_seq` if the in-memory window covers
        them (else None: read the store), and a mailbox of the events to come (it reports a
        stall after `keepalive_s` quiet: send a keep-alive). A stream `max_event_buffer` events
        behind is ended (`send_ready`)."""
        live = self.live.get(run_id)
        if live is None:
            return None, None
        mailbox = Mailbox[EventRecord](stall_s=keepalive_s)
        live.listeners.append(mailbox)
        recent: list[EventRecord] | None = None
        if live.recent and live.recent[0].seq <= after_seq + 1:
            recent = [e for e in live.recent if e.seq > after_seq]
        elif not live.recent and live.next_seq <= after_seq + 1:
            recent = []
        return recent, mailbox

    async def cancel(self, record: RunRecord) -> RunRecord:
        """Cancel a run in flight (idempotent; a finished run is returned as it is)."""
        if record.finished:
            return record
        live = self.live.get(record.id)
        if live is not None:
            self._user_cancelled.add(record.id)
            self.executor.cancel(record.id)
            with anyio.move_on_after(RESULT_TIMEOUT_S):
                await live.done.wait()
            return live.record
        record.status, record.error = "cancelled", "cancelled"
        record.finished_at = record.updated_at = time.time()
        await self.store.save_run(record)
        return record

    async def drain(self, timeout_s: float) -> int:
        """Admit no new run; hold every run at its next step; wait up to `timeout_s` for the
        steps that cannot stop safely (`legato.programs.drain`). Returns how many still run."""
        self.draining = True
        return await self.executor.gate.drain(timeout_s)

    def active_count(self) -> int:
        return len(self.live)
