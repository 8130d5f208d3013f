"""Rotary position embedding (RoPE) of the Llama-architecture decoder: the frequency table (with
Llama 3.1's frequency-dependent scaling), the cos/sin tables per position, and HF's rotate-half
application. `legato.engine_adapter.torch.model` uses (and re-exports) them."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from legato.engine_adapter.torch.config import ModelConfig


def _inv_freq(config: ModelConfig) -> Tensor:
    dim = config.head_dim
    inv = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    scaling = config.rope_scaling
    kind = None if scaling is None else scaling.get("rope_type", scaling.get("type"))
    if scaling is not None and kind == "llama3":
        # Llama 3.1 frequency-dependent scaling: long wavelengths are slowed by `factor`, short
        # ones kept, and the band in between interpolated smoothly.
        factor = float(scaling["factor"])
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        old_len = float(scaling.get("original_max_position_embeddings", 8192))
        low_wavelen = old_len / low
        high_wavelen = old_len / high
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old_len / wavelen - low) / (high - low)
        mid = (1 - smooth) * scaled / factor + smooth * scaled
        is_mid = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv = torch.where(is_mid, mid, scaled)
    return inv


class RotaryEmbedding(nn.Module):
    """Rotary position embedding with cos/sin tables precomputed for every position."""

    cos: Tensor
    sin: Tensor

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        inv = _inv_freq(config)
        pos = torch.arange(config.max_position_embeddings, dtype=torch.float64)
        freqs = torch.outer(pos, inv)
        emb = torch.cat([freqs, freqs], dim=-1)
        self.register_buffer("cos", emb.cos().float(), persistent=False)
        self.register_buffer("sin", emb.sin().float(), persistent=False)

    def tables(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos, sin `[T, 1, D]` for the step's positions (looked up once, shared by all layers)."""
        return self.cos[positions].unsqueeze(1).to(dtype), self.sin[positions].unsqueeze(1).to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """HF's rotate-half convention on `[T, heads, D]`."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


__all__ = ["RotaryEmbedding", "apply_rope"]
