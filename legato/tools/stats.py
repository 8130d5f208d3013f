"""Tool latency statistics for the scheduler.

Why lognormal: tool latencies are positive and right-skewed (a test suite usually takes 2 s and
sometimes 40 s), and their logarithm is close to normal. The scheduler needs a mean (how long will
this run be away?) and upper quantiles (how long to pin its KV prefix through the tool call before
the pin costs more than recomputing), both of which follow from two running moments of log latency.

Pure, synchronous and clock-free, like every policy input (DESIGN.md, "policies are pure"): the
runtime and the simulator both feed `record` with durations they measured (or simulated).
Memory is bounded: O(1) per (tool, tenant) key, with least-recently-updated tenant keys evicted.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist
from typing import TypeVar

# log(0) is -inf; latencies below a microsecond are clock noise anyway.
_MIN_SECONDS = 1e-6

_K = TypeVar("_K", str, tuple[str, str])


@dataclass(frozen=True, slots=True)
class LognormalFit:
    """Latency ~ LogNormal(mu, sigma): log(seconds) has mean `mu` and standard deviation `sigma`."""

    count: int
    mean_s: float  # arithmetic mean of the samples
    mu: float
    sigma: float  # sample standard deviation of log latency (0 with one sample)

    def quantile(self, q: float) -> float:
        if self.sigma == 0.0:
            return math.exp(self.mu)
        return math.exp(self.mu + self.sigma * NormalDist().inv_cdf(q))


class _Moments:
    """Welford running moments of latency and of log latency."""

    __slots__ = ("count", "log_m2", "log_mean", "mean")

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.log_mean = 0.0
        self.log_m2 = 0.0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.mean += (seconds - self.mean) / self.count
        x = math.log(max(seconds, _MIN_SECONDS))
        delta = x - self.log_mean
        self.log_mean += delta / self.count
        self.log_m2 += delta * (x - self.log_mean)

    def fit(self) -> LognormalFit:
        var = self.log_m2 / (self.count - 1) if self.count > 1 else 0.0
        sigma = math.sqrt(max(var, 0.0))
        return LognormalFit(count=self.count, mean_s=self.mean, mu=self.log_mean, sigma=sigma)


class ToolLatencyStats:
    """Latency per tool and per (tool, tenant).

    `expected_latency` prefers the tenant's own mean once it has `min_tenant_samples` samples (one
    tenant's `run_tests` may be much slower than another's), then the tool-wide mean, then the prior
    (the ToolSpec's `expected_latency_s`, via the `prior` lookup), else None.
    """

    def __init__(
        self,
        *,
        prior: Callable[[str], float | None] | None = None,
        min_tenant_samples: int = 5,
        max_tenants: int = 10_000,
        max_tools: int = 10_000,
    ) -> None:
        if min_tenant_samples < 1 or max_tenants < 1 or max_tools < 1:
            raise ValueError("min_tenant_samples, max_tenants and max_tools must be >= 1")
        self._prior = prior
        self.min_tenant_samples = min_tenant_samples
        self.max_tenants = max_tenants
        self.max_tools = max_tools
        self._tools: OrderedDict[str, _Moments] = OrderedDict()
        self._tenants: OrderedDict[tuple[str, str], _Moments] = OrderedDict()

    @property
    def has_prior(self) -> bool:
        return self._prior is not None

    def use_prior(self, prior: Callable[[str], float | None] | None) -> None:
        """Set where the fallback (the ToolSpec's expected latency) comes from."""
        self._prior = prior

    def record(self, tool: str, seconds: float, tenant: str | None = None) -> None:
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"tool latency must be a finite number >= 0, got {seconds!r} for {tool!r}")
        self._bump(self._tools, tool, self.max_tools).add(seconds)
        if tenant is not None:
            self._bump(self._tenants, (tool, tenant), self.max_tenants).add(seconds)

    @staticmethod
    def _bump(table: OrderedDict[_K, _Moments], key: _K, limit: int) -> _Moments:
        moments = table.get(key)
        if moments is None:
            moments = table[key] = _Moments()
            while len(table) > limit:
                table.popitem(last=False)
        else:
            table.move_to_end(key)
        return moments

    def _moments(self, tool: str, tenant: str | None) -> _Moments | None:
        if tenant is not None:
            own = self._tenants.get((tool, tenant))
            if own is not None and own.count >= self.min_tenant_samples:
                return own
        return self._tools.get(tool)

    def count(self, tool: str, tenant: str | None = None) -> int:
        """Samples recorded for the tool (or exactly for this tenant of the tool)."""
        table_entry = self._tenants.get((tool, tenant)) if tenant is not None else self._tools.get(tool)
        return table_entry.count if table_entry is not None else 0

    def fit(self, tool: str, tenant: str | None = None) -> LognormalFit | None:
        """The lognormal fit the other queries use (tenant's when it has enough samples)."""
        moments = self._moments(tool, tenant)
        return moments.fit() if moments is not None and moments.count > 0 else None

    def expected_latency(self, tool: str, tenant: str | None = None) -> float | None:
        fit = self.fit(tool, tenant)
        if fit is not None:
            return fit.mean_s
        return self._prior(tool) if self._prior is not None else None

    def quantile(self, tool: str, q: float, tenant: str | None = None) -> float | None:
        """The q-quantile of the fitted lognormal, or None before the tool's first sample."""
        if not 0.0 < q < 1.0:
            raise ValueError(f"quantile q must be strictly between 0 and 1, got {q!r}")
        fit = self.fit(tool, tenant)
        return fit.quantile(q) if fit is not None else None

    def tools(self) -> list[str]:
        return sorted(self._tools)
