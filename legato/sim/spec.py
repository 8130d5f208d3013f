"""Speculative decoding in the simulator: measured acceptance turned into decode time.

The simulated engine advances every decoding sequence one token per (virtual) step and keeps all
KV accounting per token; speculation changes only how long those tokens take. A verify step at
draft length g computes g + 1 query tokens per sequence and emits tau(g) tokens per sequence on
average, where tau(g) is the tokens per verify step measured on real text (`legato bench spec`,
stored with its provenance in `data/spec_acceptance.json`). So one virtual step costs the
verify step's roofline time divided by tau(g):

    compute = (2 * params * n(g+1) + attn_flops * ((g+1) * ctx + n * g(g+1)/2)) / FLOP/s
    memory  = (weights + kv_bytes * (ctx + n * g)) / bandwidth      (KV read once per step)
    t_virtual = (max(compute, memory) + overhead) / tau(g)

Both terms stay linear in the step index, so a decode jump keeps its closed form. The draft
length g is chosen per jump from the cost model: the g (0 = no speculation, tau = 1) with the
least time per token for the batch and context at the jump's start. Large batches are compute
bound, where drafted tokens cost real FLOPs, so speculation backs off there by itself; no
threshold is set by hand. Steps that also prefill run without speculation (conservative).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from legato.sim.cost_model import CostModel, linear_run_time

SPEC_METHODS = ("none", "suffix", "ngram")


@dataclass(frozen=True, slots=True)
class SpecCostModel(CostModel):
    """CostModel whose decode runs are speculative; `acceptance` is ((g, tau(g)), ...)."""

    acceptance: tuple[tuple[int, float], ...] = ()

    def __post_init__(self) -> None:
        for g, tau in self.acceptance:
            if g < 1 or not 1.0 <= tau <= g + 1:
                raise ValueError(
                    f"acceptance needs draft length >= 1 and 1 <= tau <= g + 1, got ({g}, {tau})"
                )

    def _coefficients(self, n: int, ctx_sum: float, g: int, tau: float) -> tuple[float, ...]:
        m = self.model
        f, bw = self.flops_per_s, self.bytes_per_s
        q = g + 1
        c0 = (2.0 * m.params * n * q + m.attn_flops_per_ctx_token * (q * ctx_sum + n * g * q / 2.0)) / f
        c1 = m.attn_flops_per_ctx_token * q * n / f
        m0 = (m.weight_bytes + m.kv_bytes_per_token * (ctx_sum + n * g)) / bw
        m1 = m.kv_bytes_per_token * n / bw
        return c0 / tau, c1 / tau, m0 / tau, m1 / tau, self.overhead_s / tau

    def draft_len(self, n: int, ctx_sum: float) -> tuple[int, float]:
        """(g, tau) with the least time per token for this batch; (0, 1.0): do not speculate."""
        best = (0, 1.0)
        best_t = CostModel.decode_run_time(self, n, ctx_sum, 1)
        for g, tau in self.acceptance:
            c0, _, m0, _, ov = self._coefficients(n, ctx_sum, g, tau)
            t = max(c0, m0) + ov
            if t < best_t:
                best, best_t = (g, tau), t
        return best

    def decode_run_time(self, n: int, ctx_sum: float, k: int) -> float:
        g, tau = self.draft_len(n, ctx_sum)
        if g == 0:
            return CostModel.decode_run_time(self, n, ctx_sum, k)
        c0, c1, m0, m1, ov = self._coefficients(n, ctx_sum, g, tau)
        return linear_run_time(c0, c1, m0, m1, k, ov)


@cache
def _table() -> dict[str, Any]:
    text = resources.files("legato.sim").joinpath("data/spec_acceptance.json").read_text()
    data: dict[str, Any] = json.loads(text)
    return data


def acceptance(workload: str, method: str) -> tuple[tuple[int, float], ...]:
    """Measured (draft length, tokens per verify step) of `method` on `workload`; () for none.
    ValueError (saying what is measured) for an unknown method or an unmeasured workload."""
    if method not in SPEC_METHODS:
        raise ValueError(f"unknown --spec {method!r}; valid: {', '.join(SPEC_METHODS)}")
    if method == "none":
        return ()
    entry = _table().get("workloads", {}).get(workload)
    if entry is None:
        measured = ", ".join(_table().get("workloads", {}))
        raise ValueError(
            f"no acceptance measured on real text for workload {workload!r} (measured: {measured}); "
            "use --spec none"
        )
    return tuple(sorted((int(g), float(tau)) for g, tau in entry["tokens_per_step"][method].items()))


def provenance(workload: str) -> dict[str, Any]:
    entry: dict[str, Any] = _table()["workloads"][workload]["source"]
    return entry
