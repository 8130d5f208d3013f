"""Hold a program's KV through a tool call, or let it go: the cost-benefit time-to-live.

When a program starts a tool, its context either stays resident (pinned, counted in the KV
budget) or is released (evictable; with tiers it is parked there by eviction) and brought back
by recompute or a tier load when the next call comes. For a context of `c` private tokens:

- letting go costs `R` engine seconds when the program returns (`EngineRates.reload_s`:
  recompute, or a tier load, whichever is cheaper);
- holding costs `h = u * c / capacity` engine seconds per second: the share of the KV pool it
  blocks (the share of the batch it withholds when memory binds), times `u`, the chance that
  memory is wanted (`memory_price`: the pool's fill fraction; pins yield when it runs out).

Holding for up to `tau` gains `G(tau) = R * F(tau) - h * E[min(T, tau)]` where `T` is the tool's
latency (F its CDF): the recompute saved when the tool returns within the TTL, less the memory
held meanwhile. The TTL is the `tau` that maximises `G` (Continuum's cost-benefit rule over the
tool's latency distribution); the program is released when no `tau` gains anything.

With the tool's latency fitted (lognormal, learned online from `ToolFinished`) `G` is evaluated
in closed form on the fit's quantiles. Without a fit (fewer than two samples) there is no
distribution to optimise over and the rule is ski rental: hold for `R / h`, the time after
which holding has cost as much as one recomputation (never more than twice the optimum).

Constants: none. `QUANTILE_GRID` is numerical resolution (the quantiles at which `G` is
evaluated, plus the break-even time), not a tuned value.
"""

from __future__ import annotations

import math
from statistics import NormalDist

from legato.tools.stats import LognormalFit

QUANTILE_GRID = tuple(i / 64 for i in range(1, 64))  # resolution of the TTL search
_N = NormalDist()


def _expected_min(fit: LognormalFit, tau: float) -> float:
    """E[min(T, tau)] for T ~ LogNormal(mu, sigma)."""
    mu, s = fit.mu, fit.sigma
    z = (math.log(tau) - mu) / s
    return math.exp(mu + s * s / 2.0) * _N.cdf(z - s) + tau * (1.0 - _N.cdf(z))


def hold_ttl(recompute_s: float, hold_per_s: float, fit: LognormalFit | None) -> float | None:
    """The TTL to hold a context through a tool (None: release it now). `recompute_s` is
    what releasing costs when the program returns, `hold_per_s` what holding costs per second."""
    if recompute_s <= 0.0:
        return None
    if hold_per_s <= 0.0:
        return math.inf  # memory is free: holding costs nothing
    breakeven = recompute_s / hold_per_s
    if fit is None or fit.count < 2 or fit.sigma <= 0.0:
        return breakeven
    best_tau, best_gain = 0.0, 0.0
    taus = [fit.quantile(q) for q in QUANTILE_GRID]
    taus.append(breakeven)
    for tau in taus:
        if tau <= 0.0:
            continue
        p = _N.cdf((math.log(tau) - fit.mu) / fit.sigma)
        gain = recompute_s * p - hold_per_s * _expected_min(fit, tau)
        if gain > best_gain:
            best_tau, best_gain = tau, gain
    return best_tau if best_gain > 0.0 else None


def memory_price(current: float, capacity: float) -> float:
    """`u`: the engine seconds one second of the whole pool is worth to others — its fill
    fraction. Pins yield when memory runs out (`PolicyTraits.pin_yield`), so a hold only costs
    anything when the memory is wanted, and the fuller the pool, the likelier that is; a
    near-empty pool makes holding free."""
    return min(1.0, max(0.0, current / capacity)) if capacity > 0 else 1.0
