"""The rollout API of `legato serve` (token-in / token-out multi-turn RL rollouts):

* `POST /v1/rollouts` — start a rollout (or a GRPO group: `n` samples of one prompt, prefilled
  once, their KV forked) and run its first turn.
* `POST /v1/rollouts/{id}/turns` — append tool / environment tokens (loss mask 0) and run the
  next model turn (mask 1). After an abort, a turn with no env tokens resumes the rollout after
  its partial tokens.
* `POST /v1/rollouts/{id}/abort` — end the turn in flight now; its partial tokens are kept.
* `GET /v1/rollouts/{id}` — the trajectory: ids, mask, logprobs, weight version per token.
* `POST /v1/rollouts/{id}/finish` — drop the record and end the program (404 if unknown).

Each model token comes with the logprob it was sampled with (and `top_logprobs` on request) and
the weight version of the step that produced it; each answer names the replica that ran the turn
(`X-Legato-Replica`). The samples of a group are one group for the scheduler: its prompt is held
once per replica and its rollouts go to the replica the group started on.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import Response

from legato.engine_adapter.server.strict_json import StrictJSONRoute
from legato.rl.rollout import Rollout
from legato.server.auth import Tenant, current_tenant
from legato.server.errors import ApiError, responses
from legato.server.proxy_generation import server_errors
from legato.server.proxy_models import MAX_ID_LEN
from legato.server.rl_models import CreatedRollouts, CreateRollouts, RolloutOut, TurnOut, TurnRequest
from legato.server.rl_service import RolloutService, turn_out
from legato.server.routes_rl_control import control_router
from legato.server.routes_rl_wire import wire_router

TenantDep = Annotated[Tenant, Depends(current_tenant)]
RolloutId = Annotated[str, Path(min_length=1, max_length=MAX_ID_LEN)]


def rollout_out(r: Rollout) -> RolloutOut:
    return RolloutOut(
        rollout_id=r.rollout_id,
        group_id=r.group_id,
        status=r.status,
        prompt_ids=r.prompt_ids,
        response_ids=r.response_ids,
        response_mask=r.response_mask,
        response_logprobs=r.response_logprobs,
        weight_versions=r.weight_versions,
        finish_reasons=r.finish_reasons,
        num_turns=r.num_turns,
    )


def rollout_router(rl: RolloutService) -> APIRouter:
    router = APIRouter(tags=["rl-rollouts"], route_class=StrictJSONRoute)
    svc = rl.proxy.svc

    @router.post(
        "/v1/rollouts",
        response_model=CreatedRollouts,
        responses=responses(400, 409, 503),
        summary="Start a rollout (n > 1: a GRPO group sharing one prefill) and run its first turn.",
    )
    async def create(
        body: CreateRollouts, raw: Request, reply: Response, tenant: TenantDep
    ) -> CreatedRollouts | Response:
        gid = body.rollout_id or f"rollout-{uuid.uuid4().hex}"
        with_index = body.n > 1
        ids = [f"{gid}:{i}" if with_index else gid for i in range(body.n)]
        for rid in ids:
            if (tenant.id, rid) in rl.rollouts:
                raise ApiError(409, f"rollout {rid!r} exists", param="rollout_id")
        with server_errors():
            prompt = svc.check_tokens(body.prompt_ids, "prompt_ids")
        sampling = rl.sampling(body.sampling_params, len(prompt), body.n)
        rollouts = [
            Rollout(rid, tenant.id, list(prompt), group_id=gid if with_index else None) for rid in ids
        ]
        for r in rollouts:
            rl.add(r)
            r.running = "first-turn"
        outs = None
        try:
            # the group's one call belongs to sample 0's program (the scheduler continues it)
            group = (gid, len(prompt)) if with_index else None
            outs = await rl.generate(tenant, ids[0], prompt, sampling, raw, group=group, reply=reply)
        finally:
            for r in rollouts:
                r.running = None
                if outs is None:  # refused, failed or the client left: no rollout was started
                    rl.drop(tenant.id, r.rollout_id)
        if outs is None:
            return Response(status_code=499)
        turns = []
        for r, out in zip(rollouts, outs, strict=True):
            r.add_model(out)
            turns.append(turn_out(r, out))
        return CreatedRollouts(group_id=gid, turns=turns)

    @router.post(
        "/v1/rollouts/{rollout_id}/turns",
        response_model=TurnOut,
        responses=responses(400, 404, 409, 503),
        summary="Append tool / env tokens (mask 0), then run the model's next turn (mask 1).",
    )
    async def turn(
        rollout_id: RolloutId, body: TurnRequest, raw: Request, reply: Response, tenant: TenantDep
    ) -> TurnOut | Response:
        r = rl.get(tenant, rollout_id)
        if r.running is not None:
            raise ApiError(409, f"rollout {rollout_id!r} has a turn running", param="rollout_id")
        with server_errors():
            env = svc.check_tokens(body.env_ids, "env_ids")
        context = (*r.context, *env)
        sampling = rl.sampling(body.sampling_params, len(context))
        r.running = "turn"
        group = None if r.group_id is None else (r.group_id, len(r.prompt_ids))
        try:
            outs = await rl.generate(tenant, rollout_id, context, sampling, raw, group=group, reply=reply)
        finally:
            r.running = None
        if outs is None:
            return Response(status_code=499)
        r.add_env(env)
        r.add_model(outs[0])
        return turn_out(r, outs[0])

    @router.post(
        "/v1/rollouts/{rollout_id}/abort",
        response_model=RolloutOut,
        responses=responses(400, 404),
        summary="Abort the turn in flight (its partial tokens are kept; a later turn resumes).",
    )
    async def abort(rollout_id: RolloutId, tenant: TenantDep) -> RolloutOut:
        r = rl.get(tenant, rollout_id)
        rl.abort(tenant, rollout_id)
        return rollout_out(r)

    @router.get(
        "/v1/rollouts/{rollout_id}",
        response_model=RolloutOut,
        responses=responses(400, 404),
        summary="The trajectory: token ids, loss mask, logprobs and weight version per token.",
    )
    async def get(rollout_id: RolloutId, tenant: TenantDep) -> RolloutOut:
        return rollout_out(rl.get(tenant, rollout_id))

    @router.post(
        "/v1/rollouts/{rollout_id}/finish",
        response_model=RolloutOut,
        responses=responses(400, 404),
        summary="End the rollout: its record is returned and dropped, its KV no longer kept.",
    )
    async def finish(rollout_id: RolloutId, tenant: TenantDep) -> RolloutOut:
        r = rl.get(tenant, rollout_id)
        rl.finish(tenant, rollout_id)
        return rollout_out(r)

    return router


def rl_router(state: Any) -> APIRouter:
    """The RL routes (rollout API, framework data plane, control plane) for the REST app; the
    proxy's router must be built first (`state.extras["proxy"]`)."""
    rl = RolloutService(state.extras["proxy"], state.replicas)
    state.extras["rl"] = rl
    router = APIRouter(route_class=StrictJSONRoute)
    router.include_router(rollout_router(rl))
    router.include_router(wire_router(rl))
    router.include_router(control_router(rl.control))
    return router
