"""The engine's prefill cost, measured online: what the load-vs-recompute decision weighs a tier
load against.

Computing tokens `[start, end)` on top of a cached `[0, start)` costs a per-token part (weights:
projections and MLP) plus a part growing with context (attention reads every earlier token):
`a * n + b * n * (start + end) / 2` with `n = end - start`. Each engine step is one observation
(its tokens and their summed context against its wall time); `a` and `b` are an exponentially
weighted least-squares fit, so the model follows the machine it runs on (and its load) instead of
trusting a constant. Before any observation the priors are used.

Not the speculation back-off's `legato.spec.backoff.StepCostModel`, though both learn step times:
this prices the *tokens of a prompt* (a sum over spans, with the context term that dominates long
prefills, no per-step part: loading from a tier does not save a step, only its tokens' compute),
in wall time because a tier load is wall time; that one prices *whole decode/verify steps by
their size* (the per-step part included, any shape: at a few tokens per step a CPU's small
matrix kernels make cost non-linear), in the clock the engine prices its steps in.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from legato.cache.two_term_fit import TwoTermFit

DECAY = 0.97  # weight of an observation per newer one: the fit remembers about the last 30


@dataclass(slots=True)
class PrefillCostModel:
    per_token_s: float = 1e-4  # prior for `a`
    per_token_context_s: float = 1e-8  # prior for `b`
    decay: float = DECAY
    _fit: TwoTermFit = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._fit = TwoTermFit(self.decay)

    @property
    def observations(self) -> int:
        return self._fit.observations

    def observe(self, spans: Sequence[tuple[int, int]], seconds: float) -> None:
        """One step computed the token spans `[(start, end), ...]` in `seconds`."""
        x1 = float(sum(e - s for s, e in spans))
        x2 = float(sum((e - s) * (s + e) / 2 for s, e in spans))
        if x1 <= 0 or seconds <= 0:
            return
        with self._lock:
            self._fit.add(x1, x2, seconds)
            self._refit()

    def _refit(self) -> None:
        solved = self._fit.solve()
        if solved is not None:
            self.per_token_s, self.per_token_context_s = solved
            return
        s, y = self._fit.sxx, self._fit.sxy
        if s[0] > 0:  # degenerate (all steps alike) or a negative term: fit the per-token cost alone
            self.per_token_s = max(y[0] / s[0] - self.per_token_context_s * s[1] / s[0], 1e-9)

    def __call__(self, start: int, end: int) -> float:
        """Estimated seconds to compute tokens `[start, end)` with `[0, start)` cached."""
        if end <= start:
            return 0.0
        n = end - start
        return self.per_token_s * n + self.per_token_context_s * n * (start + end) / 2
