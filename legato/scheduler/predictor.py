"""Reuse predictor: when will a run's resident KV prefix be used next?

Eviction, pinning and prefetch all hinge on one number per run: the expected time until its next
LLM call reads the prefix it left behind. Sources, most specific first:

- call hints (`is_last_step`: never again; `next_tool`: after that tool) — the executor derives
  them from a declarative program's graph;
- the program graph itself (`RunStarted.spec`): when the next LLM node does not start with the
  same prefix parts, the run's private prefix is not reused even though a call follows;
- per-tool latency statistics learned online from `ToolFinished`, per tenant once it has samples
  (`legato.tools.stats.ToolLatencyStats`, lognormal fit): the prediction is the fit's median,
  the pin TTL a high quantile;
- for dynamic agents, which tool followed each call site in past runs of the same program name.

Every prediction made at a tool start is checked against the run's actual next call, so a bench
can report how good the predictor is (median absolute error, fraction within 2x).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from legato.scheduler.events import CallHints, ProgramShape
from legato.scheduler.program_history import ProgramHistory
from legato.tools.stats import LognormalFit, ToolLatencyStats

MIN_PREDICTION_S = 1e-3  # ratios of near-zero predictions are meaningless


@dataclass(slots=True)
class _Pending:
    started_s: float
    predicted_s: float  # predicted delay from started_s to the next call


class ReusePredictor:
    def __init__(
        self,
        *,
        default_tool_s: float | None = None,
        max_samples: int = 100_000,
        min_tenant_samples: int = 5,
    ) -> None:
        self.tools = ToolLatencyStats(min_tenant_samples=min_tenant_samples)
        self.history = ProgramHistory()
        # Before a tool has samples or a hint: this, else the mean latency of every tool run
        # so far (0 before any: a prefetch for it goes out at once, which costs nothing).
        self.default_tool_s = default_tool_s
        self._all_tools_s = 0.0
        self._all_tools_n = 0
        self._specs: dict[str, ProgramShape] = {}  # program name -> declarative program
        self._reuse_cache: dict[tuple[str, str], bool | None] = {}
        self._pending: dict[str, _Pending] = {}
        # (tool, tenant) -> fitted lognormal (or None): fits are O(1) but not free, and tool
        # starts are hot; a tool's entries are dropped when it gets a new sample.
        self._fits: dict[str, dict[str, LognormalFit | None]] = {}
        self._abs_err: deque[float] = deque(maxlen=max_samples)
        self._within_2x: deque[bool] = deque(maxlen=max_samples)

    # --- learning ------------------------------------------------------------------------

    def run_started(self, program: str, spec: ProgramShape | None) -> None:
        if spec is not None and program not in self._specs:
            self._specs[program] = spec

    def tool_finished(self, tool: str, tenant: str, duration_s: float) -> None:
        self.tools.record(tool, max(0.0, duration_s), tenant)
        self._all_tools_s += max(0.0, duration_s)
        self._all_tools_n += 1
        self._fits.pop(tool, None)

    def _fit(self, tool: str, tenant: str) -> LognormalFit | None:
        by_tenant = self._fits.setdefault(tool, {})
        if tenant not in by_tenant:
            by_tenant[tenant] = self.tools.fit(tool, tenant)
        return by_tenant[tenant]

    def call_arrived(self, run_id: str, now: float) -> None:
        """A call of the run arrived: settle the prediction made when its tool started."""
        pending = self._pending.pop(run_id, None)
        if pending is None:
            return
        actual = now - pending.started_s
        predicted = pending.predicted_s
        self._abs_err.append(abs(actual - predicted))
        lo, hi = max(actual, MIN_PREDICTION_S), max(predicted, MIN_PREDICTION_S)
        self._within_2x.append(max(lo, hi) <= 2.0 * min(lo, hi))

    def run_finished(self, run_id: str, program: str, calls: int, known: int | None = None) -> None:
        self._pending.pop(run_id, None)
        self.history.record_run(program, calls, known)

    # --- predictions ---------------------------------------------------------------------

    def tool_latency_s(self, tool: str, tenant: str, hint_s: float | None = None) -> float:
        """Predicted duration of one run of `tool`: the fitted median, else the hint."""
        fit = self._fit(tool, tenant)
        if fit is not None:
            return math.exp(fit.mu)
        return hint_s if hint_s is not None else self._unknown_tool_s()

    def tool_fit(self, tool: str, tenant: str) -> LognormalFit | None:
        """The tool's fitted latency distribution (the tenant's once it has samples)."""
        return self._fit(tool, tenant)

    def tool_quantile_s(self, tool: str, tenant: str, q: float, hint_s: float | None = None) -> float:
        """The q-quantile of the tool's latency (a pin TTL); twice the hint before any sample."""
        if not 0.0 < q < 1.0:
            raise ValueError(f"quantile q must be strictly between 0 and 1, got {q!r}")
        fit = self._fit(tool, tenant)
        if fit is not None:
            return fit.quantile(q)
        return 2.0 * (hint_s if hint_s is not None else self._unknown_tool_s())

    def _unknown_tool_s(self) -> float:
        if self.default_tool_s is not None:
            return self.default_tool_s
        n = self._all_tools_n
        return self._all_tools_s / n if n else 0.0

    def reuses_prefix(self, program: str, node: str, hints: CallHints) -> bool:
        """Will a later call of this run read the prefix this call leaves behind?"""
        if hints.is_last_step:
            return False
        spec = self._specs.get(program)
        if spec is None:
            return True
        key = (program, node)
        if key not in self._reuse_cache:
            self._reuse_cache[key] = spec.reuses_first_prefix_after(node)
        return self._reuse_cache[key] is not False

    def next_tool(self, program: str, node: str, hints: CallHints) -> str | None:
        """The tool expected after this call: the hint, else what followed this site before."""
        if hints.next_tool is not None:
            return hints.next_tool
        return self.history.likely_tool(program, node)

    def tool_started(
        self, run_id: str, tool: str, tenant: str, now: float, hint_s: float | None = None
    ) -> float:
        """Absolute time the run's prefix is predicted to be needed again (its next call);
        recorded to be checked against the actual next call."""
        delay = self.tool_latency_s(tool, tenant, hint_s)
        self._pending[run_id] = _Pending(now, delay)
        return now + delay

    # --- accuracy ------------------------------------------------------------------------

    def accuracy(self) -> dict[str, float]:
        """`predictor_samples`, `predictor_median_abs_err_s`, `predictor_within_2x` (fraction of
        tool-gap predictions within a factor 2 of the actual gap)."""
        n = len(self._abs_err)
        if n == 0:
            return {"predictor_samples": 0.0}
        ordered = sorted(self._abs_err)
        mid = n // 2
        median = ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2.0
        return {
            "predictor_samples": float(n),
            "predictor_median_abs_err_s": median,
            "predictor_within_2x": sum(self._within_2x) / n,
        }
