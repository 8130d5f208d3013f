"""The RL control plane over every replica of `legato serve`: pause, resume, weight updates,
prefix-cache resets, sleep / wake-up.

The torch engine does each itself (`engine_adapter/torch/weight_control.py`). vLLM and SGLang
engines get the call forwarded to their own route (translated between the two spellings where
both have the operation: vLLM `/pause` is SGLang `/pause_generation`); an operation an engine has
no route for is refused with a 400 naming it, before any replica changed. Updates check every
torch replica's tensors before the first one loads, so replicas never end on different versions
because of a bad tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import torch

from legato.engine_adapter.base import Engine, EngineError
from legato.engine_adapter.http.common import HTTPEngineBase
from legato.engine_adapter.http.sglang import SGLangEngine
from legato.engine_adapter.http.vllm import VLLMEngine
from legato.engine_adapter.torch.engine import TorchEngine
from legato.engine_adapter.torch.weight_sync import (
    WeightUpdateError,
    check_update,
    decode_tensors,
    parse_version,
    read_safetensors_dir,
)

PAUSE_MODES = ("keep", "abort", "wait")
# SGLang's pause modes: "abort" aborts, "retract" and "in_place" keep requests for the resume.
SGLANG_TO_MODE = {"abort": "abort", "retract": "keep", "in_place": "keep"}
MODE_TO_SGLANG = {"abort": "abort", "keep": "in_place", "wait": "in_place"}


class ControlError(Exception):
    """A refused control call: HTTP `status`, the message, and the field at fault."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


@dataclass(frozen=True, slots=True)
class Forward:
    """How one operation is spelled on an HTTP engine: method, path, query, JSON body."""

    method: str
    path: str
    params: dict[str, str] | None = None
    json: Any = None


def _vllm_route(op: str, arg: dict[str, Any]) -> Forward | None:
    if op == "pause":
        return Forward(
            "POST", "/pause", {"mode": arg["mode"], "clear_cache": str(arg["clear_cache"]).lower()}
        )
    simple = {"resume": "/resume", "reset_prefix_cache": "/reset_prefix_cache", "wake_up": "/wake_up"}
    if op in simple:
        return Forward("POST", simple[op], json=arg.get("json") or {})
    if op == "sleep":
        return Forward("POST", "/sleep", json=arg.get("json") or {})
    if op in ("update_weights", "init_weight_transfer_engine"):
        return Forward("POST", f"/{op}", json=arg["json"])
    return None


def _sglang_route(op: str, arg: dict[str, Any]) -> Forward | None:
    if op == "pause":
        return Forward("POST", "/pause_generation", json={"mode": MODE_TO_SGLANG[arg["mode"]]})
    simple = {"resume": "/continue_generation", "reset_prefix_cache": "/flush_cache"}
    if op in simple:
        return Forward("POST", simple[op])
    if op == "update_from_disk":
        return Forward("POST", "/update_weights_from_disk", json=arg["json"])
    if op == "sleep":
        return Forward("POST", "/release_memory_occupation", json={})
    if op == "wake_up":
        return Forward("POST", "/resume_memory_occupation", json={})
    return None


class RLControl:
    """Fans one control call out to every replica (in order; the first refusal stops it)."""

    def __init__(self, engines: Sequence[Engine]) -> None:
        self.engines = list(engines)

    @property
    def torch_engines(self) -> list[TorchEngine]:
        return [e for e in self.engines if isinstance(e, TorchEngine)]

    @property
    def weight_version(self) -> str | None:
        versions = {e.weight_version for e in self.torch_engines}
        return next(iter(versions)) if len(versions) == 1 else None

    def _plan(self, op: str, arg: dict[str, Any]) -> list[Forward | None]:
        """What each replica gets (None: a torch engine, which does it itself); refuses first."""
        plan: list[Forward | None] = []
        for i, engine in enumerate(self.engines):
            if isinstance(engine, TorchEngine):
                plan.append(None)
                continue
            route = (
                _vllm_route(op, arg)
                if isinstance(engine, VLLMEngine)
                else _sglang_route(op, arg)
                if isinstance(engine, SGLangEngine)
                else None
            )
            if route is None:
                kind = type(engine).__name__
                raise ControlError(400, f"replica {i} ({kind}) has no route for {op!r}", op)
            plan.append(route)
        return plan

    async def _forward(self, engine: Engine, route: Forward) -> dict[str, Any]:
        assert isinstance(engine, HTTPEngineBase)
        resp = await engine.control(route.method, route.path, params=route.params, json=route.json)
        if resp.status_code >= 400:
            raise ControlError(
                502, f"{route.path} on the engine answered {resp.status_code}: {resp.text[:300]}"
            )
        return {"forwarded": route.path, "status": resp.status_code}

    async def _each(self, op: str, arg: dict[str, Any], local: Any) -> list[dict[str, Any]]:
        plan = self._plan(op, arg)
        out: list[dict[str, Any]] = []
        for i, (engine, route) in enumerate(zip(self.engines, plan, strict=True)):
            try:
                result = await local(engine) if route is None else await self._forward(engine, route)
            except WeightUpdateError as exc:
                raise ControlError(400, str(exc), exc.field) from exc
            except EngineError as exc:
                raise ControlError(400, str(exc), op) from exc
            out.append({"replica": i, **(result or {})})
        return out

    async def pause(self, mode: str = "keep", clear_cache: bool = False) -> list[dict[str, Any]]:
        if mode not in PAUSE_MODES:
            raise ControlError(400, f"mode must be one of {list(PAUSE_MODES)}, got {mode!r}", "mode")

        async def local(e: TorchEngine) -> dict[str, Any]:
            aborted = await e.pause(mode)
            if clear_cache:
                await e.reset_prefix_cache()
            return {"paused": mode, "aborted": aborted}

        return await self._each("pause", {"mode": mode, "clear_cache": clear_cache}, local)

    async def resume(self) -> list[dict[str, Any]]:
        async def local(e: TorchEngine) -> dict[str, Any]:
            return {"resumed": await e.resume()}

        return await self._each("resume", {}, local)

    async def reset_prefix_cache(self) -> list[dict[str, Any]]:
        async def local(e: TorchEngine) -> dict[str, Any]:
            await e.reset_prefix_cache()
            return {"reset": True}

        return await self._each("reset_prefix_cache", {}, local)

    async def sleep(self, json: dict[str, Any]) -> list[dict[str, Any]]:
        """The torch engine keeps its weights where they are: sleeping pauses it (keep mode)."""

        async def local(e: TorchEngine) -> dict[str, Any]:
            await e.pause("keep")
            return {"sleeping": True}

        return await self._each("sleep", {"json": json}, local)

    async def wake_up(self, json: dict[str, Any]) -> list[dict[str, Any]]:
        async def local(e: TorchEngine) -> dict[str, Any]:
            return {"resumed": await e.resume()}

        return await self._each("wake_up", {"json": json}, local)

    async def forward_only(self, op: str, json: dict[str, Any], why: str) -> list[dict[str, Any]]:
        """An operation only HTTP engines have (e.g. NCCL weight transfer): torch replicas refuse."""

        async def local(e: TorchEngine) -> dict[str, Any]:
            raise ControlError(400, why, op)

        return await self._each(op, {"json": json}, local)

    async def update_from_disk(
        self, model_path: str, version: Any, raw: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """Load a safetensors checkpoint directory (SGLang engines get the call as sent)."""
        ver = _checked_version(version)
        tensors: dict[str, torch.Tensor] = {}
        if self.torch_engines:
            try:
                tensors = await anyio.to_thread.run_sync(read_safetensors_dir, Path(model_path))
            except WeightUpdateError as exc:
                raise ControlError(400, str(exc), exc.field) from exc
        return await self._update("update_from_disk", tensors, ver, raw)

    async def update_from_tensors(self, body: bytes) -> list[dict[str, Any]]:
        """Load tensors sent as msgpack (only torch replicas can take them)."""
        try:
            tensors, ver = await anyio.to_thread.run_sync(decode_tensors, body)
        except WeightUpdateError as exc:
            raise ControlError(400, str(exc), exc.field) from exc
        return await self._update("update_tensors", tensors, ver, {})

    async def _update(
        self, op: str, tensors: dict[str, torch.Tensor], ver: str | None, raw: dict[str, Any]
    ) -> list[dict[str, Any]]:
        self._plan(op, {"json": raw})
        for e in self.torch_engines:  # every replica's check before any replica loads
            try:
                await anyio.to_thread.run_sync(check_update, e.core.model, tensors, ver)
            except WeightUpdateError as exc:
                raise ControlError(400, str(exc), exc.field) from exc

        async def local(e: TorchEngine) -> dict[str, Any]:
            return {"weight_version": await e.update_weights(tensors, ver)}

        return await self._each(op, {"json": raw}, local)


def _checked_version(raw: Any) -> str | None:
    try:
        return parse_version(raw)
    except WeightUpdateError as exc:
        raise ControlError(400, str(exc), exc.field) from exc
