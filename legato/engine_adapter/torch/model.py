"""Llama-architecture decoder (Llama 2/3, Qwen2) over a flattened token batch.

Module and parameter names follow Hugging Face's `LlamaForCausalLM` exactly
(`model.layers.0.self_attn.q_proj.weight`, ...), so a checkpoint's state dict loads with no
renaming. The forward takes all tokens of a step flattened into one `[T]` batch (decodes and
prefill chunks of many sequences together) so every linear layer runs once per step; only
attention looks at sequence boundaries, through an `AttentionContext` built by the model runner.
With `ctx=None` the model runs a plain dense causal forward over one sequence, which the tests use
as the uncached reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from legato.engine_adapter.torch import cpu_kernels
from legato.engine_adapter.torch.config import ModelConfig
from legato.engine_adapter.torch.packed_decode import PackedDecoder
from legato.engine_adapter.torch.rope import RotaryEmbedding as RotaryEmbedding
from legato.engine_adapter.torch.rope import apply_rope as apply_rope

if TYPE_CHECKING:
    from legato.engine_adapter.torch.cpu_kernels import CpuKernels
    from legato.engine_adapter.torch.decode_workspace import WorkspacePlan


@dataclass(slots=True)
class PrefillSlice:
    """One sequence's chunk in the flattened batch: tokens [start, start + length)."""

    start: int
    length: int
    context_len: int  # cached tokens + this chunk: how many keys the chunk attends to
    context_slots: Tensor | None  # [context_len] long KV slots; None when there is no cached prefix
    mask: Tensor | None  # [length, context_len] bool; None when plain causal (no cached prefix)


@dataclass(slots=True)
class AttentionContext:
    """What attention needs about the step's batch. Decode tokens come first in the batch.

    The per-layer KV cache is `[num_slots, kv_heads, 2 * head_dim]` (slot = block * block_size +
    offset; keys and values side by side), so writing a token is one contiguous row and one
    `index_select` gathers keys and values of a whole batch at once."""

    slot_mapping: Tensor  # [T] long: KV slot of each token of the step
    num_decode: int  # tokens [0, num_decode) are single-token chunks
    decode_slots: Tensor | None  # [num_decode * decode_len] long, padded with slot 0
    decode_len: int
    decode_mask: Tensor | None  # [num_decode, 1, 1, decode_len] bool; None when all lengths are equal
    prefills: list[PrefillSlice]
    # dense per-sequence KV rows (see decode_workspace.py); when set, decode attention reads
    # them instead of gathering `decode_slots` out of the paged cache
    decode_workspace: WorkspacePlan | None = None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        if dtype == torch.float32:  # one fused kernel, same arithmetic as below
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        xf = x.float()  # half precision: normalise in float32 like Hugging Face does
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(dtype)


def _fuse(linears: list[nn.Linear]) -> tuple[Tensor, Tensor | None]:
    """Concatenate the weights (and biases) of linears that read the same input into one tensor
    and make each module's parameters views into it: one matmul instead of several, while the
    state dict keeps Hugging Face's names and in-place loads still land in the fused storage."""
    with torch.no_grad():
        weight = torch.cat([lin.weight.detach() for lin in linears], dim=0)
        bias = None
        if linears[0].bias is not None:
            bias = torch.cat([lin.bias.detach() for lin in linears if lin.bias is not None], dim=0)
        row = 0
        for lin in linears:
            n = lin.weight.shape[0]
            lin.weight = nn.Parameter(weight[row : row + n], requires_grad=False)
            if bias is not None:
                lin.bias = nn.Parameter(bias[row : row + n], requires_grad=False)
            row += n
    return weight, bias


def _views_intact(fused: Tensor | None, parts: list[Tensor | None]) -> bool:
    """Whether each part still lies where `_fuse` put it inside `fused`, in order."""
    if fused is None:
        return all(part is None for part in parts)
    row_bytes = fused.stride(0) * fused.element_size()
    ptr = fused.data_ptr()
    for part in parts:
        if part is None or part.data_ptr() != ptr or part.device != fused.device:
            return False
        ptr += part.shape[0] * row_bytes
    return True


def _fused_current(fused: Tensor, fused_bias: Tensor | None, linears: list[nn.Linear]) -> bool:
    return _views_intact(fused, [lin.weight for lin in linears]) and _views_intact(
        fused_bias, [lin.bias for lin in linears]
    )


def _check_views(fused: Tensor, linears: list[nn.Linear], what: str) -> None:
    """Raise unless each linear's weight still lies where `_fuse` put it inside `fused`."""
    if not _views_intact(fused, [lin.weight for lin in linears]):
        raise RuntimeError(f"{what} weights were replaced after fusing: call model.fuse()")


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        h, d = config.hidden_size, config.head_dim
        self.q_proj = nn.Linear(h, self.num_heads * d, bias=config.attention_bias)
        self.k_proj = nn.Linear(h, self.num_kv_heads * d, bias=config.attention_bias)
        self.v_proj = nn.Linear(h, self.num_kv_heads * d, bias=config.attention_bias)
        self.o_proj = nn.Linear(self.num_heads * d, h, bias=False)
        self.qkv_weight, self.qkv_bias = _fuse([self.q_proj, self.k_proj, self.v_proj])

    def fuse(self) -> None:
        linears = [self.q_proj, self.k_proj, self.v_proj]
        if not _fused_current(self.qkv_weight, self.qkv_bias, linears):
            self.qkv_weight, self.qkv_bias = _fuse(linears)

    def _check_fused(self) -> None:
        _check_views(self.qkv_weight, [self.q_proj, self.k_proj, self.v_proj], "attention")

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        ctx: AttentionContext | None,
        kv: Tensor | None,
        layer: int = 0,
    ) -> Tensor:
        self._check_fused()
        t = x.shape[0]
        h, kvh, d = self.num_heads, self.num_kv_heads, self.head_dim
        qkv = F.linear(x, self.qkv_weight, self.qkv_bias).view(t, h + 2 * kvh, d)
        qk = apply_rope(qkv[:, : h + kvh], cos, sin)
        q, k, v = qk[:, :h], qk[:, h:], qkv[:, h + kvh :]
        out = self._dense(q, k, v) if ctx is None or kv is None else self._paged(q, k, v, ctx, kv, layer)
        result: Tensor = self.o_proj(out.reshape(t, h * d))
        return result

    def forward_fused(
        self,
        x: Tensor,
        residual: Tensor,
        positions: Tensor,
        rotary: RotaryEmbedding,
        ctx: AttentionContext,
        kv: Tensor,
        layer: int,
        kern: CpuKernels,
    ) -> Tensor:
        """`residual + attention(x)` with the CPU kernels: RoPE and the KV writes are one call,
        decode attention another, and the residual add rides on the output projection's GEMM."""
        self._check_fused()
        t = x.shape[0]
        h, kvh, d = self.num_heads, self.num_kv_heads, self.head_dim
        qkv = F.linear(x, self.qkv_weight, self.qkv_bias).view(t, h + 2 * kvh, d)
        nd, plan = ctx.num_decode, ctx.decode_workspace
        kern.rope_store(qkv, h, rotary.cos, rotary.sin, positions, kv, ctx.slot_mapping)
        q, k, v = qkv[:, :h], qkv[:, h : h + kvh], qkv[:, h + kvh :]
        out = torch.empty(t, h, d, dtype=x.dtype)
        if nd and plan is not None:
            keys, values = plan.keys[layer], plan.values[layer]
            scale = 1.0 / math.sqrt(d)
            kern.decode_attention(qkv[:nd], h, keys, values, plan.rows, plan.lens, out, scale)
        elif nd:
            out[:nd] = self._decode_gather(q[:nd], ctx, kv)
        self._prefill(q, k, v, ctx, kv, out)
        return torch.addmm(residual, out.view(t, h * d), self.o_proj.weight.t())

    def _dense(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Causal attention over one whole sequence, no cache: the reference path."""
        return _causal_sdpa(q, k, v, None)

    def _paged(
        self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext, kv: Tensor, layer: int
    ) -> Tensor:
        d = self.head_dim
        # Write this step's keys/values first, so the reads below see the whole context.
        kv.index_copy_(0, ctx.slot_mapping, torch.cat([k, v], dim=-1))
        out = torch.empty_like(q)
        nd = ctx.num_decode
        if nd and ctx.decode_workspace is not None:
            plan = ctx.decode_workspace
            assert plan.key_tile == 0, "the torch ops read the untiled workspace layout"
            keys, values = plan.keys[layer], plan.values[layer]  # [rows, kvh, D, cap], [rows, kvh, cap, D]
            keys[plan.rows, :, :, plan.positions] = k[:nd]
            values[plan.rows, :, plan.positions] = v[:nd]
            m, length = plan.num_rows, plan.length
            kd, vd = keys[:m, :, :, :length].transpose(-1, -2), values[:m, :, :length]
            # GQA for single-token queries: the query heads sharing a KV head become that head's
            # "query rows" ([nd, kvh, group, D]), so SDPA solves kvh small problems per sequence
            # instead of num_heads (same result as enable_gqa, with less per-problem overhead).
            qg = q[:nd].reshape(nd, self.num_kv_heads, self.num_heads // self.num_kv_heads, d)
            # idle rows (not decoding this step) get a zero query; their outputs are dropped
            qd = qg if plan.identity else qg.new_zeros(m, *qg.shape[1:]).index_copy_(0, plan.rows, qg)
            od = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=plan.mask)
            out[:nd] = (od if plan.identity else od.index_select(0, plan.rows)).reshape(nd, self.num_heads, d)
        elif nd:
            out[:nd] = self._decode_gather(q[:nd], ctx, kv)
        self._prefill(q, k, v, ctx, kv, out)
        return out

    def _decode_gather(self, q: Tensor, ctx: AttentionContext, kv: Tensor) -> Tensor:
        """Decode attention gathering every context from the paged cache (no workspace)."""
        assert ctx.decode_slots is not None
        nd, d, kvh = q.shape[0], self.head_dim, self.num_kv_heads
        qg = q.reshape(nd, kvh, self.num_heads // kvh, d)
        g = kv.index_select(0, ctx.decode_slots).view(nd, ctx.decode_len, kvh, 2 * d)
        g = g.transpose(1, 2)  # [nd, kvh, L, 2D]
        od = F.scaled_dot_product_attention(qg, g[..., :d], g[..., d:], attn_mask=ctx.decode_mask)
        return od.reshape(nd, self.num_heads, d)

    def _prefill(
        self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext, kv: Tensor, out: Tensor
    ) -> None:
        """Each prefill chunk's causal attention over its cached prefix and itself, into `out`."""
        d = self.head_dim
        for p in ctx.prefills:
            span = slice(p.start, p.start + p.length)
            if p.context_slots is None:
                out[span] = _causal_sdpa(q[span], k[span], v[span], None)
            else:
                g = kv.index_select(0, p.context_slots)  # [ctx, kvh, 2D]
                out[span] = _causal_sdpa(q[span], g[..., :d], g[..., d:], p.mask)


def _causal_sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """Attention of one sequence's queries `[n, H, D]` over keys/values `[ctx, KVH, D]`; causal
    (is_causal) when `mask` is None. Inputs go in as 4-D `[1, heads, len, D]`: CPU SDPA only
    takes its fused flash kernel for 4-D inputs (3-D falls back to the ~10x slower math path)."""
    o = F.scaled_dot_product_attention(
        q.transpose(0, 1).unsqueeze(0),
        k.transpose(0, 1).unsqueeze(0),
        v.transpose(0, 1).unsqueeze(0),
        attn_mask=mask,
        is_causal=mask is None,
        enable_gqa=True,
    )
    return o.squeeze(0).transpose(0, 1)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.inter = config.intermediate_size
        self.gate_up_weight, _ = _fuse([self.gate_proj, self.up_proj])

    def fuse(self) -> None:
        if not _fused_current(self.gate_up_weight, None, [self.gate_proj, self.up_proj]):
            self.gate_up_weight, _ = _fuse([self.gate_proj, self.up_proj])

    def _check_fused(self) -> None:
        _check_views(self.gate_up_weight, [self.gate_proj, self.up_proj], "MLP")

    def forward(self, x: Tensor) -> Tensor:
        gate_up = F.linear(x, self.gate_up_weight)
        out: Tensor = self.down_proj(F.silu(gate_up[:, : self.inter]) * gate_up[:, self.inter :])
        return out


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        ctx: AttentionContext | None,
        kv: Tensor | None,
        layer: int = 0,
    ) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, ctx, kv, layer)
        out: Tensor = x + self.mlp(self.post_attention_layernorm(x))
        return out

    def forward_fused(
        self,
        x: Tensor,
        positions: Tensor,
        rotary: RotaryEmbedding,
        ctx: AttentionContext,
        kv: Tensor,
        layer: int,
        kern: CpuKernels,
    ) -> Tensor:
        """`forward` with the CPU kernels (same arithmetic up to float rounding)."""
        eps = self.input_layernorm.eps
        h = kern.rmsnorm(x, self.input_layernorm.weight, eps)
        x = self.self_attn.forward_fused(h, x, positions, rotary, ctx, kv, layer, kern)
        h = kern.rmsnorm(x, self.post_attention_layernorm.weight, self.post_attention_layernorm.eps)
        self.mlp._check_fused()
        gate_up = kern.silu_mul(F.linear(h, self.mlp.gate_up_weight))
        return torch.addmm(x, gate_up, self.mlp.down_proj.weight.t())


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([DecoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    """The decoder plus LM head. `kv_cache` (if given) is `[layers, num_slots, kv_heads,
    2 * head_dim]`; see `AttentionContext`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.rotary = RotaryEmbedding(config)
        # the paged forward uses `cpu_kernels` (and, for decode-only steps, `packed_decode`) when
        # it can; tests switch them off to compare
        self.use_cpu_kernels = True
        self.use_packed_decode = True
        self._packed_decoder: PackedDecoder | None = None
        self._packed_decode_unavailable = False

    def decoder_layers(self) -> list[DecoderLayer]:
        """The decoder layers, typed (`packed_decode` reads their weights)."""
        layers = list(self.model.layers)
        assert all(isinstance(layer, DecoderLayer) for layer in layers)
        return layers  # type: ignore[return-value]

    def _kernels(self, x: Tensor) -> CpuKernels | None:
        return self.kernels_for(x.device, x.dtype)

    def kernels_for(self, device: torch.device, dtype: torch.dtype) -> CpuKernels | None:
        """The fused CPU kernels when they apply: float32 on the CPU, head_dim a multiple of 16
        (whole vector registers) and at most `cpu_kernels.MAX_HEAD_DIM`, and not disabled."""
        d = self.config.head_dim
        if not self.use_cpu_kernels or device.type != "cpu" or dtype != torch.float32:
            return None
        if d % 16 or d > cpu_kernels.MAX_HEAD_DIM:
            return None
        return cpu_kernels.load()

    def packed_decoder(self, kern: CpuKernels) -> PackedDecoder | None:
        """The one-call decode step (`packed_decode.py`) when MKL's packed GEMM is reachable."""
        if not self.use_packed_decode or self._packed_decode_unavailable:
            return None
        if self._packed_decoder is None:
            gemm = cpu_kernels.packed_gemm()
            if gemm is None or not PackedDecoder.fits(self):
                self._packed_decode_unavailable = True  # asked every step: answer once
                return None
            self._packed_decoder = PackedDecoder(self, kern, gemm)
        return self._packed_decoder

    def fuse(self) -> LlamaForCausalLM:
        """(Re)build the fused q/k/v and gate/up weights where they no longer back the
        projections' weights (after `.to()` or replacing parameters, which break the views);
        where they still do, nothing changes, so packed copies of them stay valid."""
        for layer in self.model.layers:
            assert isinstance(layer, DecoderLayer)
            layer.self_attn.fuse()
            layer.mlp.fuse()
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        return self

    def forward(
        self,
        input_ids: Tensor,
        positions: Tensor,
        ctx: AttentionContext | None = None,
        kv_cache: Tensor | None = None,
    ) -> Tensor:
        """Hidden states `[T, hidden]` after the final norm (call `logits` on the rows you need)."""
        x = self.model.embed_tokens(input_ids)
        kern = self._kernels(x) if ctx is not None and kv_cache is not None else None
        if kern is not None:
            assert ctx is not None and kv_cache is not None
            decoder = None
            if not ctx.prefills and ctx.decode_workspace is not None:
                decoder = self.packed_decoder(kern)
            if decoder is not None:
                return decoder.run(x, positions, ctx, kv_cache)
            for i, layer in enumerate(self.model.layers):
                assert isinstance(layer, DecoderLayer)
                x = layer.forward_fused(x, positions, self.rotary, ctx, kv_cache[i], i, kern)
            return kern.rmsnorm(x, self.model.norm.weight, self.model.norm.eps)
        cos, sin = self.rotary.tables(positions, x.dtype)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, ctx, kv_cache[i] if kv_cache is not None else None, i)
        out: Tensor = self.model.norm(x)
        return out

    def logits(self, hidden: Tensor) -> Tensor:
        out: Tensor = self.lm_head(hidden).float()
        return out

    @torch.inference_mode()
    def dense_logits(self, token_ids: list[int] | Tensor) -> Tensor:
        """Logits `[T, vocab]` of one sequence by a plain causal forward with no KV cache."""
        device = self.lm_head.weight.device
        ids = torch.as_tensor(token_ids, dtype=torch.long, device=device)
        positions = torch.arange(ids.shape[0], device=device)
        return self.logits(self.forward(ids, positions))


_LOGIT_SCALE = 3.0


def init_default_weights(model: LlamaForCausalLM, seed: int) -> None:
    """Deterministic random init for the default model.

    Scales are chosen so a random model's next-token distribution is neither flat nor one-hot:
    greedy text varies with the prompt and sampling occasionally reaches end-of-sequence.
    """
    gen = torch.Generator().manual_seed(seed)
    config = model.config
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("layernorm.weight"):
                param.fill_(1.0)
            elif name == "model.norm.weight":
                # Unit-variance embeddings are tied to the head: this sets the logit scale.
                param.fill_(_LOGIT_SCALE / math.sqrt(config.hidden_size))
            elif name.endswith(".bias"):
                param.normal_(0.0, 0.02, generator=gen)
            elif name == "model.embed_tokens.weight":
                param.normal_(0.0, 1.0, generator=gen)
            else:
                fan_in = param.shape[1]
                std = 1.0 / math.sqrt(fan_in)
                if name.endswith(("o_proj.weight", "down_proj.weight")):
                    std /= math.sqrt(2 * config.num_hidden_layers)
                param.normal_(0.0, std, generator=gen)
        if not config.tie_word_embeddings:
            model.lm_head.weight.normal_(0.0, 1.0, generator=gen)
