"""Model presets: the architecture numbers the roofline cost model needs.

KV bytes per token = 2 (K and V) x layers x kv_heads x head_dim x dtype bytes, summed over the
whole model; with tensor parallelism each GPU holds 1/tp of the heads, so per-replica KV capacity
is the summed memory of its `tp` GPUs minus the weights.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    params: float  # parameter count
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    tp: int = 1  # tensor-parallel degree: GPUs per replica
    dtype_bytes: int = 2  # bf16 weights and KV

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes

    @property
    def weight_bytes(self) -> float:
        return self.params * self.dtype_bytes

    @property
    def attn_flops_per_ctx_token(self) -> float:
        """FLOPs one query token spends per key it attends to: QK^T and PV, 2 FLOPs per MAC."""
        return 4.0 * self.layers * self.heads * self.head_dim


MODELS: dict[str, ModelSpec] = {
    # Llama-3.1-8B: 32 layers, d=4096, 32 heads, 8 KV heads (GQA), head_dim 128 -> 128 KiB/token.
    "llama-3.1-8b": ModelSpec("Llama-3.1-8B", 8.03e9, 32, 4096, 32, 8, 128, tp=1),
    # Qwen2.5-32B: 64 layers, d=5120, 40 heads, 8 KV heads -> 256 KiB/token; tp=2 leaves KV room.
    "qwen2.5-32b": ModelSpec("Qwen2.5-32B", 32.8e9, 64, 5120, 40, 8, 128, tp=2),
    # Llama-3.1-70B: 80 layers, d=8192, 64 heads, 8 KV heads -> 320 KiB/token; tp=4 as deployed.
    "llama-3.1-70b": ModelSpec("Llama-3.1-70B", 70.6e9, 80, 8192, 64, 8, 128, tp=4),
}


def model(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid choices: {', '.join(sorted(MODELS))}") from None
