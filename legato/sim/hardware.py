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
    # What `vllm serve` picks on this GPU when not told (`EngineArgs` batch defaults: 8192
    # tokens per step and 1024 sequences on GPUs of 70 GiB or more other than the A100, else
    # 2048 and 256; SGLang's `chunked_prefill_size` is 2048 below 35 GB too): the simulated
    # engine's step budget and seats unless a run sets them.
    serve_batched_tokens: int = 2048
    serve_max_seqs: int = 256

    def batch_limits(self, tokens: int | None, seqs: int | None) -> tuple[int, int]:
        """(token budget per step, most sequences running): those given, else the defaults."""
        return tokens or self.serve_batched_tokens, seqs or self.serve_max_seqs


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
    "h100": GPUSpec(
        "H100 SXM 80GB",
        peak_flops=989e12,
        hbm_bw=3.35e12,
        memory_bytes=80 * GB,
        serve_batched_tokens=8192,
        serve_max_seqs=1024,
    ),
    "a10": GPUSpec("A10 24GB", peak_flops=125e12, hbm_bw=600e9, memory_bytes=24 * GB),
    "t4": GPUSpec("T4 16GB", peak_flops=65e12, hbm_bw=320e9, memory_bytes=16 * GB),
}

TIERS: dict[str, TierSpec] = {
    # PCIe Gen4/5 x16 pinned-memory copies sustain ~25 GB/s in practice (64 GB/s theoretical).
    "host": TierSpec("host", bandwidth=25 * GB, round_trip_s=20e-6, capacity_bytes=256 * GB),
    # Redis on a 100 GbE link (12.5 GB/s), pipelined MGET round trip ~0.5 ms: for an 8B model on an
    # H100 loading (~10 us/token) beats recomputing (~30 us/token).
    "redis": TierSpec("redis", bandwidth=12.5 * GB, round_trip_s=500e-6, capacity_bytes=1024 * GB),
    # Redis on 1 GbE with a slow round trip: the setup where a KV tier is slower than recompute
    # (DESIGN.md: 38.7 s vs 1.03 s TTFT). The load-vs-recompute cost model must never choose it.
    "redis-slow": TierSpec("redis", bandwidth=0.125 * GB, round_trip_s=5e-3, capacity_bytes=1024 * GB),
}


def tier_spec(text: str) -> TierSpec:
    """`host`, `redis`, `redis-slow`, optionally with a capacity in GB: `host:64`."""
    name, sep, size = text.partition(":")
    spec = tier(name.strip())
    if not sep:
        return spec
    try:
        gb = float(size)
    except ValueError:
        raise ValueError(f"tier capacity must be a number of GB, like host:64; got {text!r}") from None
    if not gb >= 0 or gb == float("inf"):
        raise ValueError(f"tier capacity must be a finite number of GB >= 0, like host:64; got {text!r}")
    return TierSpec(spec.name, spec.bandwidth, spec.round_trip_s, gb * GB)


def tier_specs(texts: tuple[str, ...] | list[str]) -> tuple[TierSpec, ...]:
    """Tiers below the device, fastest first: at most one host tier, then at most one Redis tier."""
    specs = tuple(tier_spec(t) for t in texts)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"a tier is listed twice: {', '.join(texts)}")
    if names not in ([], ["host"], ["redis"], ["host", "redis"]):
        raise ValueError(f"tiers go fastest first (host before redis); got {', '.join(texts)}")
    return specs


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
