"""New policy weights for a running torch engine (RL weight sync): read them, check them against the
model, and load them in place.

Why in place: the model's projections are views into fused tensors and the packed decoder keys its
MKL copies on the tensors' version counters, so `copy_` into the existing parameters keeps every
fused or packed copy right, where swapping tensors would not. Every check runs before the first
copy, so a bad tensor (unknown name, wrong shape, non-float dtype, bytes that do not match the
declared shape) leaves the old weights serving untouched.

Wire format for tensors sent over HTTP: msgpack (never pickle: a weight upload must not be able to
run code), a map `{"weight_version": str | int | None, "tensors": [{"name", "dtype", "shape",
"data"}]}` where `data` is the raw little-endian bytes of the C-contiguous tensor.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import torch
from safetensors import safe_open

from legato.engine_adapter.base import EngineError
from legato.engine_adapter.torch.checkpoint import weight_files
from legato.engine_adapter.torch.model import LlamaForCausalLM

# Float dtypes a trainer may send; the engine casts them to its own dtype. Integer or bool tensors
# are never weights of this model, so they are refused by name.
WIRE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
MSGPACK_CONTENT_TYPE = "application/msgpack"


class WeightUpdateError(EngineError):
    """The update was refused before any weight changed (`field` names what was wrong)."""

    def __init__(self, message: str, field: str = "tensors") -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class WeightUpdate:
    """Checked tensors ready to load (already in the model's dtype and device) and the version
    they become."""

    tensors: dict[str, torch.Tensor]
    version: str | None


def encode_tensors(named: Mapping[str, torch.Tensor], version: str | int | None = None) -> bytes:
    """The msgpack body of a tensor upload (what a trainer sends to `/update_weights`)."""
    items = []
    for name, t in named.items():
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype not in WIRE_DTYPES:
            raise WeightUpdateError(f"tensor {name!r} has dtype {dtype}; send one of {sorted(WIRE_DTYPES)}")
        data = t.detach().to("cpu").contiguous()
        raw = data.view(torch.uint8).numpy().tobytes() if data.numel() else b""
        items.append({"name": name, "dtype": dtype, "shape": list(data.shape), "data": raw})
    body: bytes = msgpack.packb({"weight_version": version, "tensors": items}, use_bin_type=True)
    return body


def decode_tensors(body: bytes) -> tuple[dict[str, torch.Tensor], str | None]:
    """Parse a msgpack tensor upload; every malformed part is a `WeightUpdateError` naming it."""
    try:
        doc = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise WeightUpdateError(f"the body is not valid msgpack: {exc}", "body") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("tensors"), list):
        raise WeightUpdateError("the body must be a map with a `tensors` list", "tensors")
    version = _version(doc.get("weight_version"))
    out: dict[str, torch.Tensor] = {}
    for i, item in enumerate(doc["tensors"]):
        where = f"tensors[{i}]"
        if not isinstance(item, dict):
            raise WeightUpdateError(f"{where} must be a map", where)
        name, dtype, shape, data = (item.get(k) for k in ("name", "dtype", "shape", "data"))
        if not isinstance(name, str) or not name:
            raise WeightUpdateError(f"{where}.name must be a non-empty string", f"{where}.name")
        if dtype not in WIRE_DTYPES:
            raise WeightUpdateError(
                f"{where} ({name}) has dtype {dtype!r}; send one of {sorted(WIRE_DTYPES)}", f"{where}.dtype"
            )
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise WeightUpdateError(f"{where}.shape must be a list of sizes", f"{where}.shape")
        if not isinstance(data, bytes):
            raise WeightUpdateError(f"{where}.data must be binary", f"{where}.data")
        tdtype = WIRE_DTYPES[dtype]
        numel = 1
        for d in shape:
            numel *= d
        itemsize = torch.empty((), dtype=tdtype).element_size()
        if len(data) != numel * itemsize:
            raise WeightUpdateError(
                f"{where} ({name}): {len(data)} bytes do not hold shape {shape} of {dtype}", f"{where}.data"
            )
        if name in out:
            raise WeightUpdateError(f"tensor {name!r} is sent twice", f"{where}.name")
        flat = torch.frombuffer(bytearray(data), dtype=tdtype) if numel else torch.empty(0, dtype=tdtype)
        out[name] = flat.reshape(shape)
    return out, version


def read_safetensors_dir(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint directory's safetensors files (sharded or not)."""
    path = Path(path)
    try:
        is_dir = path.is_dir()
    except (OSError, ValueError):  # e.g. a NUL byte in the path
        is_dir = False
    if not is_dir:
        raise WeightUpdateError(f"model_path {str(path)!r} is not a directory", "model_path")
    out: dict[str, torch.Tensor] = {}
    try:
        files = weight_files(path)
    except EngineError as exc:
        raise WeightUpdateError(str(exc), "model_path") from exc
    for f in files:
        with safe_open(str(f), framework="pt", device="cpu") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a dict
                out[name] = handle.get_tensor(name)
    return out


def check_update(
    model: LlamaForCausalLM, tensors: Mapping[str, torch.Tensor], version: str | None
) -> WeightUpdate:
    """Check names, shapes and dtypes against the model and cast to its dtype and device. A
    partial update (a subset of the tensors) is allowed: trainers often send changed layers only."""
    if not tensors:
        raise WeightUpdateError("the update holds no tensors")
    state = model.state_dict()
    target = next(iter(state.values()))
    checked: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue  # derived from the config, as checkpoint loading ignores it
        have = state.get(name)
        if have is None:
            raise WeightUpdateError(f"the model has no tensor {name!r}", f"tensors.{name}")
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype not in WIRE_DTYPES:
            raise WeightUpdateError(
                f"tensor {name!r} has dtype {dtype}; weights are one of {sorted(WIRE_DTYPES)}",
                f"tensors.{name}",
            )
        if tuple(t.shape) != tuple(have.shape):
            raise WeightUpdateError(
                f"tensor {name!r} has shape {tuple(t.shape)}; the model's is {tuple(have.shape)}",
                f"tensors.{name}",
            )
        if not torch.isfinite(t).all():
            raise WeightUpdateError(f"tensor {name!r} holds NaN or infinite values", f"tensors.{name}")
        checked[name] = t.to(device=target.device, dtype=target.dtype)
    return WeightUpdate(checked, version)


def load_in_place(model: LlamaForCausalLM, update: WeightUpdate) -> None:
    """Copy the checked tensors into the live parameters (call between engine steps only)."""
    state = model.state_dict()
    with torch.no_grad():
        for name, t in update.tensors.items():
            state[name].copy_(t)


def next_fingerprint(fingerprint: str, version: str, epoch: int) -> str:
    """The prefix-cache identity after an update or a cache reset: block hashes mix it in, so KV
    of one weight version never serves another (the old blocks age out of the pool unreferenced)."""
    return hashlib.sha256(f"{fingerprint}|{version}|{epoch}".encode()).hexdigest()[:16]


def _version(raw: Any) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise WeightUpdateError("weight_version must be a string or an integer", "weight_version")
    text = str(raw)
    if not 1 <= len(text) <= 128:
        raise WeightUpdateError("weight_version must be 1 to 128 characters", "weight_version")
    return text


def parse_version(raw: Any) -> str | None:
    """A client's `weight_version` (string or integer) as the engine keeps it."""
    return _version(raw)
