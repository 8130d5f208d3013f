"""A decode-only step through every layer in one C call, over MKL-packed weights.

Why: at decode batch sizes a step is a few small matmuls per layer plus small ops, and what the
matmuls cost is set as much by how they are called as by the arithmetic. The per-op path
(`DecoderLayer.forward_fused`) dispatches about twenty torch ops and C kernels per layer from
Python, and every `F.linear` repacks its weight for MKL. Here the weights are packed once
(`cpu_kernels.PackedGemm`) and `lg_decode_step` runs norm, projections, RoPE, the KV writes,
attention over the decode workspace and the MLP of every layer, calling MKL directly. The
arithmetic is the per-op path's, so tests compare the two.

It applies when the step is all decodes with workspace rows (single tokens, or speculative verify
chunks whose tokens share their sequence's row: `decode_workspace.py`), on the CPU in float32,
with the C kernels built, torch's MKL reachable, and the projection weights at most
`MAX_PACKED_BYTES` (the packed copy doubles their memory). Packed weights are rebuilt when any
weight changes (a new tensor, or an in-place load, seen through the tensor's version counter).
"""

from __future__ import annotations

import ctypes
import math
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from legato.engine_adapter.torch.config import ModelConfig
    from legato.engine_adapter.torch.cpu_kernels import CpuKernels, PackedGemm
    from legato.engine_adapter.torch.decode_workspace import WorkspacePlan
    from legato.engine_adapter.torch.rope import RotaryEmbedding


# What the step reads of `model.py`'s classes, described here so this module does not import the
# model that owns it (the model builds a `PackedDecoder` of itself).
class _Norm(Protocol):
    @property
    def _parameters(self) -> dict[str, nn.Parameter | None]: ...
    @property
    def weight(self) -> Tensor: ...


class _Attention(Protocol):
    @property
    def qkv_weight(self) -> Tensor: ...
    @property
    def qkv_bias(self) -> Tensor | None: ...
    @property
    def q_proj(self) -> nn.Linear: ...
    @property
    def k_proj(self) -> nn.Linear: ...
    @property
    def v_proj(self) -> nn.Linear: ...
    @property
    def o_proj(self) -> nn.Linear: ...
    def _check_fused(self) -> None: ...


class _MLP(Protocol):
    @property
    def gate_up_weight(self) -> Tensor: ...
    @property
    def gate_proj(self) -> nn.Linear: ...
    @property
    def up_proj(self) -> nn.Linear: ...
    @property
    def down_proj(self) -> nn.Linear: ...
    def _check_fused(self) -> None: ...


class PackedLayer(Protocol):
    """A decoder layer (`model.DecoderLayer`)."""

    @property
    def input_layernorm(self) -> _Norm: ...
    @property
    def post_attention_layernorm(self) -> _Norm: ...
    @property
    def self_attn(self) -> _Attention: ...
    @property
    def mlp(self) -> _MLP: ...


class _Trunk(Protocol):
    @property
    def layers(self) -> nn.ModuleList: ...
    @property
    def norm(self) -> _Norm: ...


class PackedModel(Protocol):
    """The model whose decode steps run here (`model.LlamaForCausalLM`)."""

    @property
    def config(self) -> ModelConfig: ...
    @property
    def model(self) -> _Trunk: ...
    @property
    def rotary(self) -> RotaryEmbedding: ...
    def decoder_layers(self) -> Sequence[PackedLayer]: ...


class DecodeContext(Protocol):
    """The step's attention context (`model.AttentionContext`)."""

    @property
    def slot_mapping(self) -> Tensor: ...
    @property
    def prefills(self) -> Sequence[object]: ...
    @property
    def decode_workspace(self) -> WorkspacePlan | None: ...


MAX_PACKED_BYTES = 2 * 2**30  # larger models keep the per-op path rather than a second copy


class _Layer(ctypes.Structure):
    """Mirror of the C `lg_layer`."""

    _fields_ = [
        (name, ctypes.c_void_p)
        for name in ("input_norm", "post_norm", "qkv", "qkv_bias", "o", "gate_up", "down")
    ]


def _weight_slots(layer: PackedLayer) -> list[tuple[dict[str, Any], str]]:
    """Where each weight the step reads lives: (the owning dict, the name). Reading them through
    these dicts each step costs a fraction of nn.Module attribute lookups."""
    attn, mlp = layer.self_attn, layer.mlp
    slots: list[tuple[dict[str, Any], str]] = [
        (layer.input_layernorm._parameters, "weight"),
        (layer.post_attention_layernorm._parameters, "weight"),
        (attn.__dict__, "qkv_weight"),
        (attn.__dict__, "qkv_bias"),
        (attn.o_proj._parameters, "weight"),
        (mlp.__dict__, "gate_up_weight"),
        (mlp.down_proj._parameters, "weight"),
    ]
    # the fused tensors are only current while the per-projection weights are views into them: a
    # replaced q/k/v or gate/up weight changes the key, and repacking then fails `_check_fused`
    slots += [(m._parameters, "weight") for m in (attn.q_proj, attn.k_proj, attn.v_proj)]
    slots += [(m._parameters, "weight") for m in (mlp.gate_proj, mlp.up_proj)]
    return slots


class PackedDecoder:
    """Packed weights of one model and the call into `lg_decode_step`."""

    def __init__(self, model: PackedModel, kern: CpuKernels, gemm: PackedGemm) -> None:
        self.model = model
        self.kern = kern
        self.gemm = gemm
        self.repacks = 0  # times the weights were packed (1 unless they changed)
        self.steps = 0  # decode steps run here
        self._key: tuple[tuple[int, int], ...] = ()
        self._layer_objects: tuple[object, ...] = ()
        self._slots: list[tuple[dict[str, Any], str]] = []
        self._keep: list[Tensor] = []  # packed weights and contiguous copies the C side points into
        self._layers: ctypes.Array[_Layer] | None = None
        # engines sharing one model may step on different threads: a repack must not free
        # buffers another step is reading
        self._lock = threading.Lock()

    @staticmethod
    def fits(model: PackedModel) -> bool:
        """Whether packing the model's projections stays within `MAX_PACKED_BYTES`."""
        total = sum(p.numel() * p.element_size() for p in model.model.layers.parameters())
        return total <= MAX_PACKED_BYTES

    def _current_key(self) -> tuple[tuple[int, int], ...]:
        """Storage and version of every weight: any replacement or in-place write changes it."""
        layers = tuple(self.model.model.layers)
        if layers != self._layer_objects:
            self._layer_objects = layers
            self._slots = [slot for layer in self.model.decoder_layers() for slot in _weight_slots(layer)]
        key = []
        for owner, name in self._slots:
            t = owner[name]
            key.append((0, 0) if t is None else (t.data_ptr(), t._version))
        return tuple(key)

    def _pack(self) -> None:
        keep: list[Tensor] = []

        def plain(t: Tensor) -> int:
            c = t.detach().contiguous()
            keep.append(c)
            return c.data_ptr()

        def packed(t: Tensor) -> int:
            p = self.gemm.pack(t.detach().contiguous())
            keep.append(p)
            return p.data_ptr()

        layers = self.model.decoder_layers()
        structs = (_Layer * len(layers))()
        for s, layer in zip(structs, layers, strict=True):
            attn, mlp = layer.self_attn, layer.mlp
            attn._check_fused()
            mlp._check_fused()
            s.input_norm = plain(layer.input_layernorm.weight)
            s.post_norm = plain(layer.post_attention_layernorm.weight)
            s.qkv = packed(attn.qkv_weight)
            s.qkv_bias = None if attn.qkv_bias is None else plain(attn.qkv_bias)
            s.o = packed(attn.o_proj.weight)
            s.gate_up = packed(mlp.gate_up_weight)
            s.down = packed(mlp.down_proj.weight)
        self._keep, self._layers = keep, structs
        self.repacks += 1

    def run(self, x: Tensor, positions: Tensor, ctx: DecodeContext, kv_cache: Tensor) -> Tensor:
        """Final-normed hidden states `[n, hidden]` for the decode tokens embedded in `x` (which is
        overwritten with the residual stream)."""
        with self._lock:
            return self._run(x, positions, ctx, kv_cache)

    def _run(self, x: Tensor, positions: Tensor, ctx: DecodeContext, kv_cache: Tensor) -> Tensor:
        plan = ctx.decode_workspace
        assert plan is not None and not ctx.prefills
        key = self._current_key()
        if key != self._key:
            self._pack()
            self._key = key
        cfg = self.model.config
        n, hidden = x.shape
        out = torch.empty_like(x)
        final_norm = self.model.model.norm
        rotary = self.model.rotary
        ws = plan.tensor  # [layers, 2, rows, kv_heads, capacity, head_dim]
        status = self.kern.decode_step(
            self.gemm.compute_address,
            ctypes.addressof(self._layers) if self._layers is not None else None,
            cfg.num_hidden_layers,
            n,
            hidden,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
            cfg.intermediate_size,
            cfg.rms_norm_eps,
            x.data_ptr(),
            final_norm.weight.data_ptr(),
            out.data_ptr(),
            positions.data_ptr(),
            rotary.cos.data_ptr(),
            rotary.sin.data_ptr(),
            kv_cache.data_ptr(),
            kv_cache.stride(0),
            ctx.slot_mapping.data_ptr(),
            ws[0, 0].data_ptr(),
            ws[0, 1].data_ptr(),
            ws.stride(0),
            plan.rows.data_ptr(),
            plan.lens.data_ptr(),
            ws.shape[4],
            plan.key_tile or ws.shape[4],
            1.0 / math.sqrt(cfg.head_dim),
        )
        if status != 0:
            raise MemoryError("lg_decode_step could not allocate its scratch buffers")
        self.steps += 1
        return out
