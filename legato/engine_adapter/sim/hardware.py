"""Hardware presets for the simulated engine: GPUs and the KV tiers below them.

Numbers are vendor datasheet peaks (dense, no sparsity); the cost model applies efficiencies.
A tier is described by what decides whether loading KV from it beats recomputing it: sustained
bandwidth and the fixed cost of one round trip.
"""

from __future__ import annotations

from dataclasses import dataclass

GB = 1e9


@dataclass(frozen=True, slots=True)
class GPUSpec:
    name: str
    peak_flops: float  # dense bf16 (fp16 on T4, which has no bf16) tensor-core FLOP/s
    hbm_bw: float  # bytes/s
    memory_bytes: float


@dataclass(frozen=True, slots=True)
class TierSpec:
    """A KV tier below device memory (host RAM over PCIe, Redis over the network)."""

    name: str
    bandwidth: float  # bytes/s sustained, one direction
    round_trip_s: float  # fixed latency of one (pipelined) fetch
    capacity_bytes: float

    def load_time_s(self, nbytes: float) -> float:
        """Time to bring `nbytes` of KV back to the device in one pipelined fetch."""
        return self.round_trip_s + nbytes / self.bandwidth


GPUS: dict[str, GPUSpec] = {
    "h100": GPUSpec("H100 SXM 80GB", peak_flops=989e12, hbm_bw=3.35e12, memory_bytes=80 * GB),
    "a10": GPUSpec("A10 24GB", peak_flops=125e12, hbm_bw=600e9, memory_bytes=24 * GB),
    "t4": GPUSpec("T4 16GB", peak_flops=65e12, hbm_bw=320e9, memory_bytes=16 * GB),
}

TIERS: dict[str, TierSpec] = {
    # PCIe Gen4/5 x16 pinned-memory copies sustain ~25 GB/s in practice (64 GB/s theoretical).
    "host": TierSpec("host RAM", bandwidth=25 * GB, round_trip_s=20e-6, capacity_bytes=256 * GB),
    # A 10 GbE link (1.25 GB/s) to Redis, with a pipelined MGET round trip of ~0.5 ms.
    "redis": TierSpec("Redis", bandwidth=1.25 * GB, round_trip_s=500e-6, capacity_bytes=1024 * GB),
}


def gpu(name: str) -> GPUSpec:
    try:
        return GPUS[name]
    except KeyError:
        raise ValueError(f"unknown gpu {name!r}; valid choices: {', '.join(sorted(GPUS))}") from None


def tier(name: str) -> TierSpec:
    try:
        return TIERS[name]
    except KeyError:
        raise ValueError(f"unknown tier {name!r}; valid choices: {', '.join(sorted(TIERS))}") from None
