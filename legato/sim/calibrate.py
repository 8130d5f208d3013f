"""Fit the roofline cost model to a measured engine: the embedded torch engine on this CPU.

`python -m legato.sim.calibrate` drives the torch `EngineCore` step by step over
a spread of batch shapes (long and short prefills, chunked prefills, decode batches of several
sizes), records each step's shape — new tokens, (query, key) pairs, KV tokens touched — and its
wall time, then fits the three free numbers of `CostModel` (compute efficiency, memory
efficiency, per-step overhead) against nominal CPU peaks. The fit alternates: label each step
compute- or memory-bound under the current coefficients, solve the linear least squares for
1/(peak*eff_compute), 1/(bw*eff_mem) and the overhead, repeat. It reports the fitted numbers and
the relative error per step (mean and p90), so the simulator's timing claims for the CPU engine
rest on measured error, not on faith.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from legato.sim.cost_model import CostModel
from legato.sim.hardware import GPUSpec
from legato.sim.models import ModelSpec

# Nominal peaks of "a CPU core pair" the efficiencies are expressed against; only the products
# peak * eff matter, so these just keep the fitted efficiencies in a readable range.
CPU = GPUSpec("CPU (nominal)", peak_flops=100e9, hbm_bw=20e9, memory_bytes=16e9)


@dataclass(frozen=True, slots=True)
class StepSample:
    tokens: int
    attn_ctx: float
    kv_tokens: float
    seconds: float


@dataclass(frozen=True, slots=True)
class Calibration:
    cost: CostModel
    samples: int
    mean_rel_error: float
    p90_rel_error: float


def fit(
    samples: Sequence[StepSample],
    model: ModelSpec,
    hw: GPUSpec = CPU,
    iterations: int = 25,
    trim: float = 0.1,
) -> Calibration:
    """Least-squares fit of (eff_compute, eff_mem, overhead) to measured steps.

    Wall-clock steps on a shared CPU have outliers (another process, a GC pause) tens of times
    the typical time, so after a first fit the `trim` fraction of steps that are slowest relative
    to the prediction is dropped and the fit repeated; the reported error covers the kept steps."""
    if len(samples) < 3:
        raise ValueError("need at least 3 step samples to fit 3 coefficients")
    flops = np.array(
        [2.0 * model.params * s.tokens + model.attn_flops_per_ctx_token * s.attn_ctx for s in samples]
    )
    nbytes = np.array([model.weight_bytes + model.kv_bytes_per_token * s.kv_tokens for s in samples])
    t = np.array([s.seconds for s in samples])
    keep = np.ones(len(samples), dtype=bool)
    coeffs = _fit_coefficients(flops, nbytes, t, iterations)
    if trim > 0 and len(samples) >= 10:
        pred = _predict(coeffs, flops, nbytes)
        keep = (t / pred) <= np.quantile(t / pred, 1.0 - trim)
        coeffs = _fit_coefficients(flops[keep], nbytes[keep], t[keep], iterations)
    cf, cb, oh = coeffs
    cost = CostModel(
        model,
        hw,
        eff_compute=1.0 / (cf * hw.peak_flops * model.tp),
        eff_mem=1.0 / (cb * hw.hbm_bw * model.tp),
        overhead_s=oh,
    )
    rel = np.abs(_predict(coeffs, flops, nbytes) - t)[keep] / t[keep]
    return Calibration(cost, int(keep.sum()), float(rel.mean()), float(np.quantile(rel, 0.9)))


def _predict(c: tuple[float, float, float], flops: Any, nbytes: Any) -> Any:
    return np.maximum(c[0] * flops, c[1] * nbytes) + c[2]


def _fit_coefficients(flops: Any, nbytes: Any, t: Any, iterations: int) -> tuple[float, float, float]:
    """Alternate: label steps compute- or memory-bound, solve the linear least squares."""
    cf, cb, oh = float(np.median(t / flops)), float(np.median(t / nbytes)), 0.0
    for _ in range(iterations):
        compute_bound = cf * flops >= cb * nbytes
        a = np.column_stack(
            [np.where(compute_bound, flops, 0.0), np.where(compute_bound, 0.0, nbytes), np.ones_like(t)]
        )
        w = 1.0 / t  # relative least squares: every step counts, however short
        coef, *_ = np.linalg.lstsq(a * w[:, None], t * w, rcond=None)
        new = (max(float(coef[0]), 1e-30), max(float(coef[1]), 1e-30), max(float(coef[2]), 0.0))
        if new == (cf, cb, oh):
            break
        cf, cb, oh = new
    return cf, cb, oh


def measure(
    num_requests: int = 24, seed: int = 0, max_num_batched_tokens: int = 512
) -> tuple[ModelSpec, list[StepSample]]:
    """Run the default torch engine on CPU over mixed requests; one sample per engine step."""
    from legato.engine_adapter.base import GenerateRequest, SamplingParams
    from legato.engine_adapter.torch import build_core
    from legato.engine_adapter.torch.scheduler import SchedulerOutput

    core = build_core(max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=32, seed=seed)
    mc = core.model.config
    params = float(sum(p.numel() for p in core.model.parameters()))
    spec = ModelSpec(
        "torch-default",
        params,
        mc.num_hidden_layers,
        mc.hidden_size,
        mc.num_attention_heads,
        mc.num_key_value_heads,
        mc.head_dim,
        tp=1,
        dtype_bytes=4 if core.dtype_name == "float32" else 2,
    )
    rng = random.Random(seed)
    vocab = min(mc.vocab_size, 256)
    samples: list[StepSample] = []
    shapes: list[tuple[int, int]] = []
    real = core.scheduler

    class _Recorder:
        """Stands in for the engine's scheduler, noting the shape of every planned step."""

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def schedule(self) -> SchedulerOutput:
            plan = real.schedule()
            shapes.clear()
            shapes.extend((c.seq.num_computed_tokens, c.num_tokens) for c in plan.chunks)
            return plan

    core.scheduler = _Recorder()  # type: ignore[assignment]
    for wave in range(3):
        for i in range(num_requests // 3):
            n = rng.choice((16, 64, 200, 700, 1500))
            prompt = tuple(rng.randrange(3, vocab) for _ in range(n))
            out = rng.choice((4, 16, 48))
            sampling = SamplingParams(max_tokens=out, ignore_eos=True)
            core.add_request(GenerateRequest(f"w{wave}-{i}", prompt, sampling))
        core.step()  # warm-up step per wave (allocations), not sampled
        while core.has_unfinished():
            t0 = time.perf_counter()
            core.step()
            dt = time.perf_counter() - t0
            if not shapes:
                continue
            tokens = sum(c for _, c in shapes)
            attn = sum(c * o + c * (c + 1) / 2 for o, c in shapes)
            kv = sum(o + c for o, c in shapes)
            samples.append(StepSample(tokens, attn, kv, dt))
    core.scheduler = real
    return spec, samples


def main(num_requests: int = 12, seed: int = 0) -> Calibration:
    """Measure the torch engine, fit the cost model, print the coefficients and the error."""
    spec, samples = measure(num_requests, seed)
    cal = fit(samples, spec)
    c = cal.cost
    median_ms = statistics.median(s.seconds for s in samples) * 1e3
    print(
        f"model: {spec.params / 1e6:.1f}M params, {spec.layers} layers, kv {spec.kv_bytes_per_token} B/token"
    )
    print(f"steps measured: {len(samples)}, fitted on {cal.samples} (median {median_ms:.2f} ms)")
    mem = f"{c.bytes_per_s / 1e9:.2f} GB/s effective" if c.bytes_per_s < 1e15 else "memory term never binds"
    flops = f"{c.flops_per_s / 1e9:.2f} GFLOP/s effective"
    print(f"fitted: {flops}, {mem}, overhead {c.overhead_s * 1e3:.2f} ms/step")
    print(f"relative error per step: mean {cal.mean_rel_error:.1%}, p90 {cal.p90_rel_error:.1%}")
    return cal


if __name__ == "__main__":
    main()
