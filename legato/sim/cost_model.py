"""Roofline cost of one engine step (one forward pass over a continuous batch).

For a step that computes `tokens` new tokens:

    flops   = 2 * params * tokens  +  attn_flops_per_ctx_token * attn_ctx
    bytes   = weight_bytes  +  kv_bytes_per_token * kv_tokens
    t_step  = max(flops / (peak * eff_compute), bytes / (bw * eff_mem))  +  overhead

`attn_ctx` is the number of (query, key) pairs: a decode token at position p attends p + 1 keys;
a prefill chunk of c tokens starting at offset o attends c*o + c*(c+1)/2. `kv_tokens` is the KV
read and written: p + 1 for a decode token, o + c for a chunk (flash-attention reads the context
once per chunk). Weights are read once per step whatever the batch, which is why decode is
memory-bound and batching pays. With tensor parallelism a replica is `tp` GPUs: peak and bandwidth
scale by `tp`; all-reduce cost is folded into the fixed overhead.

Default efficiencies (stated, not fitted): 50% of peak FLOP/s in dense GEMMs (typical MFU of
prefill in vLLM on H100), 80% of HBM bandwidth, 1.5 ms per step of scheduler + sampling + launch
overhead. `calibrate.py` fits these three numbers to a measured engine.

A run of k identical-shape decode steps (same batch, every context growing by one per step) is
priced in closed form by `decode_run_time`, so the simulator never loops per token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from legato.sim.hardware import GPUSpec
from legato.sim.models import ModelSpec

GPU_MEMORY_UTILIZATION = 0.9  # vLLM's default fraction of device memory the engine may use
ACTIVATION_RESERVE_BYTES = 1.0e9  # per GPU: activations / CUDA graphs / sampler workspace


@dataclass(frozen=True, slots=True)
class CostModel:
    model: ModelSpec
    gpu: GPUSpec
    eff_compute: float = 0.5
    eff_mem: float = 0.8
    overhead_s: float = 1.5e-3

    @property
    def flops_per_s(self) -> float:
        return self.gpu.peak_flops * self.model.tp * self.eff_compute

    @property
    def bytes_per_s(self) -> float:
        return self.gpu.hbm_bw * self.model.tp * self.eff_mem

    def kv_capacity_blocks(self, block_size: int) -> int:
        """KV blocks that fit: usable device memory minus weights minus activation reserve."""
        tp = self.model.tp
        free = self.gpu.memory_bytes * tp * GPU_MEMORY_UTILIZATION
        free -= self.model.weight_bytes + ACTIVATION_RESERVE_BYTES * tp
        blocks = int(free // (self.model.kv_bytes_per_token * block_size))
        if blocks <= 0:
            raise ValueError(
                f"{self.model.name} (tp={tp}) does not fit on {self.gpu.name}: "
                f"{self.model.weight_bytes / 1e9:.1f} GB of weights"
            )
        return blocks

    def compute_s(self, tokens: float, attn_ctx: float) -> float:
        m = self.model
        return (2.0 * m.params * tokens + m.attn_flops_per_ctx_token * attn_ctx) / self.flops_per_s

    def memory_s(self, kv_tokens: float) -> float:
        m = self.model
        return (m.weight_bytes + m.kv_bytes_per_token * kv_tokens) / self.bytes_per_s

    def step_time(self, tokens: float, attn_ctx: float, kv_tokens: float) -> float:
        """Seconds for one step; see the module docstring for the terms."""
        return max(self.compute_s(tokens, attn_ctx), self.memory_s(kv_tokens)) + self.overhead_s

    def engine_facts(self) -> tuple[float, float, float, float, float]:
        """What a policy is told about this engine (`ReplicaView`'s engine facts): seconds
        per prefill token and per attended pair (compute-bound), a decode step's fixed cost
        (weights read + overhead) and its cost per context token read, KV bytes per token."""
        m = self.model
        return (
            2.0 * m.params / self.flops_per_s,
            m.attn_flops_per_ctx_token / self.flops_per_s,
            m.weight_bytes / self.bytes_per_s + self.overhead_s,
            m.kv_bytes_per_token / self.bytes_per_s,
            float(m.kv_bytes_per_token),
        )

    def decode_run_time(self, n: int, ctx_sum: float, k: int) -> float:
        """Seconds for k decode steps of a fixed batch of n sequences whose summed context
        (keys attended, p + 1 per sequence) is `ctx_sum` at the first step and grows by n per step
        (closed form: `linear_run_time`)."""
        if k <= 0:
            return 0.0
        m = self.model
        f, bw = self.flops_per_s, self.bytes_per_s
        c0 = (2.0 * m.params * n + m.attn_flops_per_ctx_token * ctx_sum) / f
        c1 = m.attn_flops_per_ctx_token * n / f
        m0 = (m.weight_bytes + m.kv_bytes_per_token * ctx_sum) / bw
        m1 = m.kv_bytes_per_token * n / bw
        return linear_run_time(c0, c1, m0, m1, k, self.overhead_s)

    def decode_steps_until(self, n: int, ctx_sum: float, kmax: int, dt: float) -> int:
        """Fewest steps (1..kmax) of a decode run whose summed time reaches `dt` (kmax if never):
        the step in flight when an outside event happens still completes.

        Step times of a run are nearly equal, so the average step time gives the answer to
        within a step or two; a short walk from there makes it exact."""
        total = self.decode_run_time(n, ctx_sum, kmax)
        if total < dt:
            return kmax
        j = min(kmax, max(1, math.ceil(dt / (total / kmax))))
        while j > 1 and self.decode_run_time(n, ctx_sum, j - 1) >= dt:
            j -= 1
        while j < kmax and self.decode_run_time(n, ctx_sum, j) < dt:
            j += 1
        return j


def linear_run_time(c0: float, c1: float, m0: float, m1: float, k: int, overhead_s: float) -> float:
    """sum over steps j = 0..k-1 of max(c0 + c1*j, m0 + m1*j) + overhead_s.

    Both roofline terms are linear in the step index j, so the sum of their max is two
    arithmetic series split where the lines cross."""
    if k <= 0:
        return 0.0
    total = _series(m0, m1, 0, k) + k * overhead_s
    d0, d1 = c0 - m0, c1 - m1  # compute minus memory: add it where positive
    if d1 == 0.0:
        if d0 > 0.0:
            total += k * d0
        return total
    cross = -d0 / d1
    if d1 > 0.0:
        j0 = min(k, max(0, math.floor(cross) + 1))
        total += _series(d0, d1, j0, k)
    else:
        j1 = min(k, max(0, math.ceil(cross)))
        total += _series(d0, d1, 0, j1)
    return total


def _series(a: float, b: float, j0: int, j1: int) -> float:
    """sum_{j=j0}^{j1-1} (a + b*j)."""
    n = j1 - j0
    if n <= 0:
        return 0.0
    return n * a + b * (j0 + j1 - 1) * n / 2.0
