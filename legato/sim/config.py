"""`SimConfig`: the simulated cluster a replay runs on (GPU and model presets, replicas, batch
limits, KV size and tiers, cost-model efficiencies), and the cost model it implies."""

from __future__ import annotations

from dataclasses import dataclass

from legato.sim.cost_model import CostModel
from legato.sim.hardware import gpu as gpu_preset
from legato.sim.models import model as model_preset


@dataclass(slots=True)
class SimConfig:
    gpu: str = "h100"
    model: str = "llama-3.1-8b"
    replicas: int = 1
    # None: what `vllm serve` picks on this GPU (`hardware.GPUSpec.serve_batched_tokens`)
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    block_size: int = 16
    kv_blocks: int | None = None  # None: from GPU memory (see CostModel.kv_capacity_blocks)
    tiers: tuple[str, ...] = ()  # KV tiers below the device, fastest first: "host[:GB]", "redis[:GB]"
    eff_compute: float = 0.5
    eff_mem: float = 0.8
    overhead_s: float = 1.5e-3
    # speculative decoding: measured (draft length, tokens per verify step); () = none (sim/spec.py)
    spec_acceptance: tuple[tuple[int, float], ...] = ()

    def batch_limits(self) -> tuple[int, int]:
        """(token budget per step, most sequences running): as set, else the GPU's defaults."""
        return gpu_preset(self.gpu).batch_limits(self.max_num_batched_tokens, self.max_num_seqs)

    def cost_model(self) -> CostModel:
        if self.spec_acceptance:
            from legato.sim.spec import SpecCostModel

            return SpecCostModel(
                model_preset(self.model),
                gpu_preset(self.gpu),
                eff_compute=self.eff_compute,
                eff_mem=self.eff_mem,
                overhead_s=self.overhead_s,
                acceptance=self.spec_acceptance,
            )
        return CostModel(
            model_preset(self.model),
            gpu_preset(self.gpu),
            eff_compute=self.eff_compute,
            eff_mem=self.eff_mem,
            overhead_s=self.overhead_s,
        )


__all__ = ["SimConfig"]
