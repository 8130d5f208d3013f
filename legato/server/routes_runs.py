"""`/v1/runs`: start, read, list, cancel runs, and submit client-side tool results."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Path, Query

from legato.engine_adapter.fields import StoreSeq
from legato.engine_adapter.server.strict_json import StrictJSONRoute
from legato.server.auth import Tenant
from legato.server.deps import StateDep, TenantDep, not_found
from legato.server.errors import ApiError, responses
from legato.server.models import RunCreate, RunList, RunView, ToolResultAccepted, ToolResultSubmit
from legato.server.routes_programs import check_program_size
from legato.server.state import ServerState
from legato.server.store.base import RunRecord, RunStatusName
from legato.server.views import program_spec, run_view
from legato.tools.client import DuplicateSubmissionError, UnknownClientCallError

router = APIRouter(prefix="/v1/runs", tags=["runs"], responses=responses(), route_class=StrictJSONRoute)

RunId = Annotated[str, Path(max_length=128, description="the run's id")]


async def tenant_run(state: ServerState, tenant: Tenant, run_id: str) -> RunRecord:
    """The tenant's run (404 otherwise): a run this instance drives is read from memory."""
    live = state.runs.live.get(run_id)
    record = live.record if live is not None else await state.store.get_run(run_id)
    if record is None or record.tenant_id != tenant.id:
        raise not_found("run", run_id, "list yours with GET /v1/runs")
    return record


@router.post("", status_code=201, summary="Start a run", responses=responses(503))
async def create_run(body: RunCreate, tenant: TenantDep, state: StateDep) -> RunView:
    """Start a run of a registered program or an inline one. Returns at once (status `pending`
    or `running`); follow it with `GET /v1/runs/{id}/events` or poll `GET /v1/runs/{id}`.
    429 with `Retry-After` when the tenant's concurrent-run or tokens-per-minute quota is used up."""
    limits = state.config.limits
    if len(body.metadata) > limits.max_metadata_keys:
        raise ApiError(
            422,
            f"metadata has {len(body.metadata)} keys; the limit is {limits.max_metadata_keys}",
            param="metadata",
        )
    size = len(json.dumps(body.inputs)) + len(json.dumps(body.metadata))
    if size > limits.max_inputs_bytes:
        raise ApiError(
            413,
            f"inputs + metadata are {size} bytes of JSON; the limit is {limits.max_inputs_bytes} "
            "(max_inputs_bytes)",
            param="inputs",
        )
    if body.program is not None:
        spec = body.program
        check_program_size(state, spec.model_dump_json())
    else:
        assert body.program_id is not None
        program = await state.store.get_program(body.program_id)
        if program is None or program.tenant_id != tenant.id:
            raise ApiError(
                404,
                f"no program {body.program_id!r} (register it with POST /v1/programs, "
                "or send it inline as `program`)",
                param="program_id",
            )
        spec = program_spec(program.spec)
    record = await state.runs.start(tenant, spec, body.program_id, dict(body.inputs), dict(body.metadata))
    return run_view(record)


@router.get("", summary="List runs")
async def list_runs(
    tenant: TenantDep,
    state: StateDep,
    status: Annotated[RunStatusName | None, Query(description="only runs with this status")] = None,
    program_id: Annotated[str | None, Query(max_length=128, description="only runs of this program")] = None,
    limit: Annotated[int, Query(ge=1, le=200, description="page size")] = 50,
    cursor: Annotated[StoreSeq | None, Query(description="`next_cursor` of the previous page")] = None,
) -> RunList:
    """This tenant's runs, newest first, `limit` per page."""
    before = cursor
    limit = min(limit, state.config.limits.max_runs_per_page)
    records = await state.store.list_runs(
        tenant.id, status=status, program_id=program_id, before_seq=before, limit=limit
    )
    nxt = str(records[-1].seq) if len(records) == limit and records else None
    return RunList(data=[run_view(r) for r in records], next_cursor=nxt)


@router.get("/{run_id}", summary="Read a run")
async def get_run(run_id: RunId, tenant: TenantDep, state: StateDep) -> RunView:
    """Status, current state, output, error, the step journal and any client tool calls the run
    is waiting for."""
    record = await tenant_run(state, tenant, run_id)
    live = state.runs.live.get(run_id)
    if live is not None:
        record = live.record
    steps = await state.store.steps(run_id)
    if state.calls is not None:  # the run may wait on another instance
        return run_view(record, steps, await state.calls.pending(run_id))
    return run_view(record, steps, state.tools.client.pending(run_id))


@router.post("/{run_id}/cancel", summary="Cancel a run")
async def cancel_run(run_id: RunId, tenant: TenantDep, state: StateDep) -> RunView:
    """Idempotent: a finished run is returned unchanged."""
    record = await tenant_run(state, tenant, run_id)
    live = state.runs.live.get(run_id)
    record = await state.runs.cancel(live.record if live is not None else record)
    return run_view(record)


@router.post("/{run_id}/tool_results", summary="Submit a client-side tool result", responses=responses(409))
async def submit_tool_result(
    run_id: RunId, body: ToolResultSubmit, tenant: TenantDep, state: StateDep
) -> ToolResultAccepted:
    """Deliver the result of a client tool call (see `pending_tool_calls` of the run). 409 when
    the call already has a result or the run waits for no client tool; 404 for an unknown call
    id while the run waits for others."""
    record = await tenant_run(state, tenant, run_id)
    try:
        if state.calls is None:
            state.tools.client.submit(run_id, body.call_id, body.output, body.error)
        elif record.finished:
            raise UnknownClientCallError(f"run {run_id!r} is {record.status}: it waits for no client tool")
        else:  # any instance accepts it; the one driving the run hears of it through Redis
            await state.calls.submit(run_id, body.call_id, body.output, body.error)
    except DuplicateSubmissionError as exc:
        raise ApiError(409, str(exc), param="call_id") from None
    except UnknownClientCallError as exc:
        # a run waiting for other calls: this call id is unknown (404); else the run is not
        # (or no longer) waiting for any client tool: a conflict with its state (409)
        waiting = await state.calls.pending(run_id) if state.calls else state.tools.client.pending(run_id)
        status = 404 if waiting and not record.finished else 409
        raise ApiError(status, str(exc), param="call_id") from None
    return ToolResultAccepted(run_id=run_id, call_id=body.call_id)
