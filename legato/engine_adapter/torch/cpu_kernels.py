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
        self._decode_attention.argtypes += [_I64, _I64, _F32, _PTR]
        for fn in (self._rmsnorm, self._silu_mul, self._rope_store, self._decode_attention):
            fn.restype = None
        self.decode_step = lib.lg_decode_step  # called by `packed_decode.PackedDecoder`
        self.decode_step.argtypes = [_PTR, _PTR, *[_I64] * 7, _F32, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR]
        self.decode_step.argtypes += [_PTR, _I64, _PTR, _PTR, _PTR, _I64, _PTR, _PTR, _I64, _I64, _F32]
        self.decode_step.restype = ctypes.c_int

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
        `rows[i]` (keys `[rows, kvh, dim, cap]` or tiled `[rows, kvh, cap / tile, dim, tile]`,
        values `[rows, kvh, cap, dim]`), then write into `out` `[n, heads, dim]` its query heads'
        attention over the row's first `lens[i]` positions."""
        n, _, dim = qkv.shape
        cap = ws_v.shape[2]
        tile = ws_kt.shape[-1]
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
            cap,
            tile,
            scale,
            out.data_ptr(),
        )


class PackedGemm:
    """MKL's packed single-precision GEMM, from the MKL that torch links statically.

    `cblas_sgemm_pack` lays a weight out once in the blocked order MKL's kernels read, so
    `cblas_sgemm_compute` skips the per-call repacking that `F.linear` pays (about a fifth of a
    small-batch matmul's time). torch exports these symbols from `libtorch_cpu` on x86-64 Linux;
    elsewhere (OpenBLAS or Accelerate builds) `find()` returns None and callers keep `F.linear`."""

    _ROW_MAJOR, _NO_TRANS, _TRANS, _PACKED, _B_MATRIX = 101, 111, 112, 151, 162  # CBLAS enums

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._size = lib.cblas_sgemm_pack_get_size
        self._size.argtypes = [ctypes.c_int, _I64, _I64, _I64]
        self._size.restype = ctypes.c_size_t
        self._pack = lib.cblas_sgemm_pack
        self._pack.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, _I64, _I64, _I64, _F32, _PTR, _I64]
        self._pack.argtypes += [_PTR]
        self._pack.restype = None
        self._compute = lib.cblas_sgemm_compute
        self._compute.argtypes = [ctypes.c_int, _I64, _I64, _I64, _I64, _I64, _PTR, _I64, _PTR, _I64, _F32]
        self._compute.argtypes += [_PTR, _I64]
        self._compute.restype = None
        address = ctypes.cast(lib.cblas_sgemm_compute, ctypes.c_void_p).value
        assert address is not None
        self.compute_address = address  # handed to the C kernels, which call it directly

    def linear(self, x: Tensor, packed: Tensor, out_features: int) -> Tensor:
        """`x @ weight.T` for `x` `[n, in]` (float32, contiguous) and a weight packed by `pack`."""
        n, in_features = x.shape
        y = torch.empty(n, out_features, dtype=torch.float32)
        self._compute(
            self._ROW_MAJOR,
            self._NO_TRANS,
            self._PACKED,
            n,
            out_features,
            in_features,
            x.data_ptr(),
            in_features,
            packed.data_ptr(),
            out_features,
            0.0,
            y.data_ptr(),
            out_features,
        )
        return y

    def works(self) -> bool:
        """A small product checked against torch: symbols that exist but do not behave as this
        module assumes (another MKL interface) must not give the engine wrong numbers."""
        gen = torch.Generator().manual_seed(0)
        weight, x = torch.randn(40, 24, generator=gen), torch.randn(3, 24, generator=gen)
        got = self.linear(x, self.pack(weight), 40)
        return bool(torch.allclose(got, x @ weight.T, atol=1e-4, rtol=1e-4))

    def pack(self, weight: Tensor, batch: int = 32) -> Tensor:
        """`weight` `[out, in]` (float32, contiguous) packed as the right operand of `x @ weight.T`.
        `batch` only sizes MKL's buffer; the packed weight serves any number of rows."""
        out_features, in_features = weight.shape
        size = self._size(self._B_MATRIX, batch, out_features, in_features)
        packed = torch.empty(-(-size // 4), dtype=torch.float32)
        self._pack(
            self._ROW_MAJOR,
            self._B_MATRIX,
            self._TRANS,
            batch,
            out_features,
            in_features,
            1.0,
            weight.data_ptr(),
            in_features,
            packed.data_ptr(),
        )
        return packed

    @staticmethod
    def find() -> PackedGemm | None:
        path = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
        if platform.machine() not in ("x86_64", "AMD64") or not path.is_file():
            return None
        try:
            gemm = PackedGemm(ctypes.CDLL(str(path)))
        except (OSError, AttributeError):
            return None
        if not gemm.works():
            log.warning("MKL's packed GEMM failed its self-check: decode steps use torch ops")
            return None
        return gemm


_loaded: CpuKernels | None = None
_tried = False
_gemm: PackedGemm | None = None
_gemm_tried = False


def packed_gemm() -> PackedGemm | None:
    """MKL's packed GEMM when torch links it (see `PackedGemm`); None otherwise or when
    `LEGATO_PACKED_GEMM=0`."""
    global _gemm, _gemm_tried
    if not _gemm_tried:
        _gemm_tried = True
        if os.environ.get("LEGATO_PACKED_GEMM", "1") != "0":
            _gemm = PackedGemm.find()
    return _gemm


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
