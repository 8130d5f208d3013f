"""`TwoTermFit`: exponentially weighted least squares of `y ~ p * x1 + q * x2` (no intercept).

Why one helper: two engine costs are learned this way, each from what its engine reports. The
torch engine fits its prefill cost to its own steps (`prefill_model`: tokens and attended pairs
against step time); a scheduler fits a vLLM or SGLang server's from its prefill-phase metrics
(`engine_adapter.http.prefill_metrics`: requests and prompt tokens against prefill seconds).
Older observations weigh `decay` times less per new one, so a fit follows its machine and load.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class TwoTermFit:
    decay: float
    observations: int = 0
    # decayed sums: x1*x1, x1*x2, x2*x2 and x1*y, x2*y
    sxx: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    sxy: list[float] = field(default_factory=lambda: [0.0, 0.0])

    def add(self, x1: float, x2: float, y: float) -> None:
        d = self.decay
        s, v = self.sxx, self.sxy
        s[0] = d * s[0] + x1 * x1
        s[1] = d * s[1] + x1 * x2
        s[2] = d * s[2] + x2 * x2
        v[0] = d * v[0] + x1 * y
        v[1] = d * v[1] + x2 * y
        self.observations += 1

    def solve(self) -> tuple[float, float] | None:
        """(p, q), or None while the observations cannot tell the two terms apart (they varied
        together) or the fit gives a term a negative cost (`p > 0`, `q >= 0` are required)."""
        s, v = self.sxx, self.sxy
        det = s[0] * s[2] - s[1] * s[1]
        if det <= 1e-12 * max(s[0] * s[2], 1e-300):
            return None
        p = (v[0] * s[2] - v[1] * s[1]) / det
        q = (v[1] * s[0] - v[0] * s[1]) / det
        return (p, q) if p > 0 and q >= 0 else None
