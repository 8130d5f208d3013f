"""Fused float32 CPU kernels for the engine's paged forward, built with the system C compiler.

Why: at decode batch sizes the model's matmuls are small, and the rest of a step is dozens of tiny
torch ops (RMSNorm alone is six, RoPE five) plus SDPA, whose per-problem setup dominates
single-token attention over a short context (measured: ~0.6 ms per layer at batch 32, for work
worth a few microseconds). Four C kernels replace them: RMSNorm, SiLU-and-multiply, RoPE fused with
the KV-cache/workspace write, and single-token decode attention over the decode workspace.

The source (`cpu_kernels_src.py`) is compiled once per machine with `cc -O3 -march=native` (well
under a second) into a cache directory keyed by the source, the flags and the CPU, then loaded
with ctypes: no torch headers, no build step at install time. If no compiler is found, the build
fails, or `LEGATO_CPU_KERNELS=0` is set, `load()` returns None and the model runs its plain torch
ops (the same arithmetic, slower). The dense reference forward never uses these kernels, so the
correctness tests compare them against independent torch code.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from legato.engine_adapter.torch.cpu_kernels_src import C_SOURCE

log = logging.getLogger(__name__)

FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-shared", "-fPIC")
MAX_HEAD_DIM = 256  # the attention kernel keeps a head in at most 16 vector registers

_I64 = ctypes.c_int64
_PTR = ctypes.c_void_p
_F32 = ctypes.c_float


def _cpu_signature() -> str:
    """What -march=native compiles for: a cached library must not be loaded on another CPU."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    lines = [ln for ln in info.splitlines() if ln.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(lines)))


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "legato" / "cpu-kernels"


def _build() -> Path | None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    key = hashlib.sha256(
        "\0".join([C_SOURCE, compiler, *FLAGS, platform.machine(), _cpu_signature()]).encode()
    ).hexdigest()[:20]
    out = _cache_dir() / f"legato_cpu_kernels_{key}.so"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        src = Path(tmp) / "kernels.c"
        src.write_text(C_SOURCE)
        lib = Path(tmp) / "kernels.so"
        proc = subprocess.run(
            [compiler, *FLAGS, str(src), "-o", str(lib), "-lm"], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            log.warning("building the CPU kernels failed, using plain torch ops:\n%s", proc.stderr[-2000:])
            return None
        os.replace(lib, out)  # atomic: concurrent builders each install a complete file
    return out


class CpuKernels:
    """ctypes bindings; every method takes contiguous float32 CPU tensors (checked by callers)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._rmsnorm = lib.lg_rmsnorm
        self._rmsnorm.argtypes = [_PTR, _PTR, _PTR, _I64, _I64, _F32]
        self._silu_mul = lib.lg_silu_mul
        self._silu_mul.argtypes = [_PTR, _PTR, _I64, _I64]
        self._rope_store = lib.lg_rope_store
        self._rope_store.argtypes = [_PTR, _I64, _I64, _I64, _I64, _PTR, _PTR, _PTR, _PTR, _PTR]
        self._decode_attention = lib.lg_decode_attention
        self._decode_attention.argtypes = [_PTR, _I64, _PTR, _PTR, _PTR, _PTR, _I64, _I64, _I64, _I64]
        self._decode_attention.argtypes += [_I64, _F32, _PTR]
        for fn in (self._rmsnorm, self._silu_mul, self._rope_store, self._decode_attention):
            fn.restype = None

    def rmsnorm(self, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        """`F.rms_norm(x, (dim,), weight, eps)` for `x` `[rows, dim]`."""
        out = torch.empty_like(x)
        self._rmsnorm(x.data_ptr(), weight.data_ptr(), out.data_ptr(), x.shape[0], x.shape[1], eps)
        return out

    def silu_mul(self, gate_up: Tensor) -> Tensor:
        """`silu(gate) * up` for `gate_up` `[rows, 2 * inter]` laid out `[gate | up]`."""
        rows, inter = gate_up.shape[0], gate_up.shape[1] // 2
        out = gate_up.new_empty(rows, inter)
        self._silu_mul(gate_up.data_ptr(), out.data_ptr(), rows, inter)
        return out

    def rope_store(
        self,
        qkv: Tensor,
        heads: int,
        cos: Tensor,
        sin: Tensor,
        positions: Tensor,
        kv: Tensor,
        slots: Tensor,
    ) -> None:
        """Rotate q and k of `qkv` `[T, heads + 2 * kv_heads, dim]` in place at `positions` (cos/sin
        tables `[positions, dim]`) and write k and v to cache `kv` `[slots, kv_heads, 2 * dim]` at
        `slots`."""
        t, width, dim = qkv.shape
        kv_heads = (width - heads) // 2
        self._rope_store(
            qkv.data_ptr(),
            t,
            heads,
            kv_heads,
            dim,
            cos.data_ptr(),
            sin.data_ptr(),
            positions.data_ptr(),
            kv.data_ptr(),
            slots.data_ptr(),
        )

    def decode_attention(
        self,
        qkv: Tensor,
        heads: int,
        ws_kt: Tensor,
        ws_v: Tensor,
        rows: Tensor,
        lens: Tensor,
        out: Tensor,
        scale: float,
    ) -> None:
        """For each decode token i (rows of `qkv` `[n, heads + 2 * kv_heads, dim]`, rotated; rows
        may be strided): write its key and value at position `lens[i] - 1` of workspace row
        `rows[i]` (keys `[rows, kvh, dim, cap]`, values `[rows, kvh, cap, dim]`), then write into
        `out` `[n, heads, dim]` its query heads' attention over the row's first `lens[i]`
        positions."""
        n, _, dim = qkv.shape
        self._decode_attention(
            qkv.data_ptr(),
            qkv.stride(0),
            ws_kt.data_ptr(),
            ws_v.data_ptr(),
            rows.data_ptr(),
            lens.data_ptr(),
            n,
            heads,
            ws_kt.shape[1],
            dim,
            ws_kt.shape[-1],
            scale,
            out.data_ptr(),
        )


_loaded: CpuKernels | None = None
_tried = False


def load() -> CpuKernels | None:
    """The kernels, built on first use; None when unavailable (callers fall back to torch ops)."""
    global _loaded, _tried
    if _tried:
        return _loaded
    _tried = True
    if os.environ.get("LEGATO_CPU_KERNELS", "1") == "0":
        return None
    try:
        path = _build()
        if path is not None:
            _loaded = CpuKernels(ctypes.CDLL(str(path)))
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("CPU kernels unavailable, using plain torch ops: %s", exc)
    return _loaded
