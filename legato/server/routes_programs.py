"""`/v1/programs`: register declarative programs (validated against the server's tools) and read them."""

from __future__ import annotations

import time
import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Query

from legato.engine_adapter.server.strict_json import StrictJSONRoute
from legato.server.deps import StateDep, TenantDep, not_found
from legato.server.errors import ApiError, responses
from legato.server.models import ProgramCreate, ProgramInfo, ProgramList
from legato.server.runs import compile_spec
from legato.server.state import ServerState
from legato.server.store.base import ProgramRecord
from legato.server.views import program_spec

router = APIRouter(
    prefix="/v1/programs", tags=["programs"], responses=responses(), route_class=StrictJSONRoute
)


def check_program_size(state: ServerState, body_json: str) -> None:
    limit = state.config.limits.max_program_bytes
    if len(body_json) > limit:
        raise ApiError(
            413,
            f"program is {len(body_json)} bytes of JSON; the limit is {limit} (max_program_bytes)",
            param="program",
        )


def info(record: ProgramRecord) -> ProgramInfo:
    spec = program_spec(record.spec)
    return ProgramInfo(
        id=record.id, name=record.name, created_at=record.created_at, nodes=len(spec.nodes), program=spec
    )


@router.post("", status_code=201, summary="Register a declarative program")
async def create_program(body: ProgramCreate, tenant: TenantDep, state: StateDep) -> ProgramInfo:
    """Validates the program (names, references, tools, reachability, loop bounds, fan-out and
    size limits) and stores it for this tenant. Invalid programs get 422 listing every issue."""
    spec = body.program
    check_program_size(state, spec.model_dump_json())
    compile_spec(spec, state.registry)
    record = ProgramRecord(
        id="prog_" + uuid.uuid4().hex,
        tenant_id=tenant.id,
        name=spec.name,
        spec=spec.model_dump(mode="json"),
        created_at=time.time(),
    )
    await state.store.put_program(record)
    return info(record)


@router.get("", summary="List this tenant's programs")
async def list_programs(
    tenant: TenantDep, state: StateDep, limit: Annotated[int, Query(ge=1, le=500)] = 100
) -> ProgramList:
    return ProgramList(data=[info(r) for r in await state.store.list_programs(tenant.id, limit)])


@router.get("/{program_id}", summary="Read a program")
async def get_program(
    program_id: Annotated[str, Path(max_length=128)], tenant: TenantDep, state: StateDep
) -> ProgramInfo:
    record = await state.store.get_program(program_id)
    if record is None or record.tenant_id != tenant.id:
        raise not_found("program", program_id, "register one with POST /v1/programs")
    return info(record)
