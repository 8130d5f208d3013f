"""`/healthz` (the process answers), `/readyz` (store reachable, engine started) and `/v1/limits`."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Response

from legato.engine_adapter.openai_api import MAX_N, MAX_TOP_LOGPROBS
from legato.engine_adapter.server.strict_json import StrictJSONRoute
from legato.programs.validate import MAX_FAN_OUT, MAX_LOOP_BOUND, MAX_NODES, MAX_PLANNED_CALLS
from legato.server.deps import StateDep
from legato.server.models import Health, LimitsView, Readiness

router = APIRouter(tags=["health"], route_class=StrictJSONRoute)

READY_TIMEOUT_S = 2.0


@router.get("/healthz", summary="Liveness")
async def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    summary="Readiness",
    responses={
        503: {"model": Readiness, "description": "Not ready (starting, stopping, or the store is down)."}
    },
)
async def readyz(state: StateDep, response: Response) -> Readiness:
    store = type(state.store).__name__
    detail: str | None = None
    if not state.ready:
        detail = "starting or stopping"
    else:
        try:
            with anyio.fail_after(READY_TIMEOUT_S):
                await state.store.ping()
        except Exception as exc:
            detail = f"store unreachable: {type(exc).__name__}: {exc}"
    body = Readiness(
        status="ready" if detail is None else "not_ready",
        store=store,
        active_runs=state.runs.active_count(),
        detail=detail,
    )
    if detail is not None:
        response.status_code = 503
    return body


@router.get("/v1/limits", summary="The server's limits")
async def limits(state: StateDep) -> LimitsView:
    """What a request may contain; every refusal quotes the limit it hit."""
    lim = state.config.limits
    return LimitsView(
        max_body_bytes=lim.max_body_bytes,
        max_program_bytes=lim.max_program_bytes,
        max_inputs_bytes=lim.max_inputs_bytes,
        max_prompt_chars=lim.max_prompt_chars,
        max_runs_per_page=lim.max_runs_per_page,
        max_nodes=MAX_NODES,
        max_fan_out=MAX_FAN_OUT,
        max_loop_bound=MAX_LOOP_BOUND,
        max_model_len=state.runs.max_model_len,
        max_n=MAX_N,
        max_top_logprobs=MAX_TOP_LOGPROBS,
        max_planned_calls=MAX_PLANNED_CALLS,
    )
