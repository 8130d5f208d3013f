"""The RL control plane on `legato serve`, under the names the frameworks call:

* SkyRL / vLLM: `POST /pause?mode=keep|abort|wait&clear_cache=`, `/resume`, `/sleep`, `/wake_up`,
  `/reset_prefix_cache`, `/init_weight_transfer_engine`, `/update_weights`, `GET /get_world_size`.
  `/update_weights` takes tensors as msgpack (`Content-Type: application/msgpack`, see
  `engine_adapter/torch/weight_sync.py`), or JSON `{"update_info": {"model_path": DIR}}`; JSON
  without `model_path` (NCCL transfer metadata) is forwarded to vLLM engines and refused by torch.
* slime / SGLang: `/pause_generation {"mode"}`, `/continue_generation`, `/flush_cache`,
  `/update_weights_from_disk {"model_path", "load_format", "weight_version"}`,
  `GET /get_weight_version`.

Each acts on every replica (`legato.rl.control.RLControl`). Weight updates are checked before
any weight changes: a bad tensor is a 400 and the old weights keep serving. Everything that
changes state answers only an admin (`legato.server.admin`: a `--admin` tenant's key, the
operator's `LEGATO_ADMIN_KEY`, or keyless localhost in single-tenant mode); other tenants get
403. The two reads (`/get_world_size`, `/get_weight_version`) answer any tenant.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from legato.engine_adapter.server.strict_json import StrictJSONRoute
from legato.engine_adapter.torch.weight_sync import MSGPACK_CONTENT_TYPE
from legato.rl.control import SGLANG_TO_MODE, ControlError, RLControl
from legato.server.admin import AdminDep, ReaderDep
from legato.server.errors import ApiError, responses

WEIGHT_UPLOAD_PATHS = ("/update_weights",)  # bodies up to Limits.max_weights_bytes
NCCL_REFUSAL = (
    "the torch engine takes weights as msgpack tensors (Content-Type: application/msgpack) or "
    "from a directory (update_info.model_path), not over NCCL"
)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SleepBody(_Body):
    level: int = Field(default=1, ge=0, le=2)
    tags: list[str] | None = None


class WakeBody(_Body):
    tags: list[str] | None = None


class ResetBody(_Body):
    reset_running_requests: bool = False


class PauseGenerationBody(_Body):
    mode: Literal["abort", "retract", "in_place"] = "abort"


class DiskUpdateBody(_Body):
    model_path: str = Field(min_length=1)
    load_format: Literal["auto", "safetensors"] | None = None
    weight_version: str | int | None = None
    abort_all_requests: bool = False
    flush_cache: bool = True  # always true here: KV of old weights is never reused


async def run_control(coro: Any) -> dict[str, Any]:
    """Await a control call; its refusal (`ControlError`) becomes the REST service's `ApiError`."""
    try:
        replicas = await coro
    except ControlError as exc:
        raise ApiError(exc.status, exc.message, param=exc.field) from exc
    return {"success": True, "replicas": replicas}


async def _json(raw: Request, model: type[BaseModel]) -> Any:
    """An optional JSON body (SkyRL posts some calls with none)."""
    data = await raw.body()
    if not data.strip():
        return model()
    try:
        return model.model_validate_json(data)
    except ValueError as exc:
        raise ApiError(400, f"invalid body: {exc}") from exc


def control_router(control: RLControl) -> APIRouter:
    router = APIRouter(tags=["rl-control"], route_class=StrictJSONRoute)

    def state(extra: dict[str, Any]) -> dict[str, Any]:
        return {**extra, "weight_version": control.weight_version}

    @router.post("/pause", responses=responses(400, 403), summary="Pause generation (keep, abort or wait).")
    async def pause(
        caller: AdminDep,
        mode: Annotated[str, Query()] = "keep",
        clear_cache: Annotated[bool, Query()] = False,
    ) -> dict[str, Any]:
        return state(await run_control(control.pause(mode, clear_cache)))

    @router.post("/resume", responses=responses(400, 403), summary="Resume generation; held requests start.")
    async def resume(caller: AdminDep) -> dict[str, Any]:
        return state(await run_control(control.resume()))

    @router.post(
        "/sleep", responses=responses(400, 403), summary="Sleep (the torch engine pauses, keep mode)."
    )
    async def sleep(raw: Request, caller: AdminDep) -> dict[str, Any]:
        body = await _json(raw, SleepBody)
        return state(await run_control(control.sleep(body.model_dump(exclude_none=True))))

    @router.post("/wake_up", responses=responses(400, 403), summary="Wake up (resume).")
    async def wake_up(raw: Request, caller: AdminDep) -> dict[str, Any]:
        body = await _json(raw, WakeBody)
        return state(await run_control(control.wake_up(body.model_dump(exclude_none=True))))

    @router.post(
        "/reset_prefix_cache", responses=responses(400, 403), summary="Make every cached prefix unreachable."
    )
    async def reset_prefix_cache(raw: Request, caller: AdminDep) -> dict[str, Any]:
        body = await _json(raw, ResetBody)
        if body.reset_running_requests:
            why = "reset_running_requests: pause with mode=abort instead"
            raise ApiError(400, why, param="reset_running_requests")
        return state(await run_control(control.reset_prefix_cache()))

    @router.post(
        "/flush_cache", responses=responses(400, 403), summary="SGLang's name for reset_prefix_cache."
    )
    async def flush_cache(caller: AdminDep) -> dict[str, Any]:
        return state(await run_control(control.reset_prefix_cache()))

    @router.get("/get_world_size", summary="Workers per server (1: one process per replica).")
    async def world_size(caller: ReaderDep) -> dict[str, int]:
        return {"world_size": 1}

    @router.get("/get_weight_version", summary="The weight version every torch replica serves.")
    async def weight_version(caller: ReaderDep) -> dict[str, Any]:
        return {"weight_version": control.weight_version}

    @router.post(
        "/init_weight_transfer_engine",
        responses=responses(400, 403),
        summary="vLLM's NCCL weight-transfer setup: forwarded to vLLM engines, refused by torch.",
    )
    async def init_weight_transfer(raw: Request, caller: AdminDep) -> dict[str, Any]:
        try:
            body = await raw.json()
        except ValueError as exc:
            raise ApiError(400, f"the body is not JSON: {exc}", param="body") from exc
        call = control.forward_only("init_weight_transfer_engine", body, NCCL_REFUSAL)
        return state(await run_control(call))

    @router.post(
        "/update_weights",
        responses=responses(400, 403),
        summary="New weights: msgpack tensors, or JSON update_info with model_path.",
    )
    async def update_weights(raw: Request, caller: AdminDep) -> dict[str, Any]:
        ctype = raw.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == MSGPACK_CONTENT_TYPE:
            return state(await run_control(control.update_from_tensors(await raw.body())))
        try:
            body = await raw.json()
        except ValueError as exc:
            raise ApiError(400, f"the body is neither msgpack nor JSON: {exc}", param="body") from exc
        info = body.get("update_info") if isinstance(body, dict) else None
        if not isinstance(info, dict):
            raise ApiError(400, "send update_info (JSON) or msgpack tensors", param="update_info")
        path = info.get("model_path")
        if isinstance(path, str):
            version = info.get("weight_version")
            return state(await run_control(control.update_from_disk(path, version, body)))
        return state(await run_control(control.forward_only("update_weights", body, NCCL_REFUSAL)))

    @router.post(
        "/pause_generation", responses=responses(400, 403), summary="SGLang's pause (abort / in_place)."
    )
    async def pause_generation(raw: Request, caller: AdminDep) -> dict[str, Any]:
        body = await _json(raw, PauseGenerationBody)
        return state(await run_control(control.pause(SGLANG_TO_MODE[body.mode])))

    @router.post("/continue_generation", responses=responses(400, 403), summary="SGLang's resume.")
    async def continue_generation(caller: AdminDep) -> dict[str, Any]:
        return state(await run_control(control.resume()))

    @router.post(
        "/update_weights_from_disk",
        responses=responses(400, 403),
        summary="SGLang's weight update from a safetensors directory.",
    )
    async def update_from_disk(body: DiskUpdateBody, caller: AdminDep) -> dict[str, Any]:
        def load() -> Any:  # a fresh coroutine, created only when it is awaited
            return control.update_from_disk(body.model_path, body.weight_version, body.model_dump())

        if body.abort_all_requests:
            await run_control(control.pause("abort"))
            try:
                out = await run_control(load())
            finally:
                await run_control(control.resume())
        else:
            out = await run_control(load())
        return state({**out, "message": "weights updated"})

    return router
