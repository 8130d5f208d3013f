"""Building blocks every workload generator shares: segment ids, tenants, arrivals, draws.

Generators must be deterministic under a seed, so everything random goes through one
`random.Random(seed)` passed in by the caller (never Python's `hash()`, which is salted per
process), and segment ids come from one `SegmentIds` counter per workload so that equal ids
always mean equal content.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from legato.sim.workload import Segment


@dataclass(slots=True)
class SegmentIds:
    """The one id counter of a workload, plus memoised ids for content shared by name.

    `shared(key, tokens)` returns the same segment every time it is asked for the same key
    (a tenant's system prompt, a database schema), so programs that use it share a KV prefix.
    """

    _next: int = 0
    _named: dict[tuple[object, ...], Segment] = field(default_factory=dict)

    def new_id(self) -> int:
        seg_id = self._next
        self._next += 1
        return seg_id

    def fresh(self, tokens: int) -> Segment:
        """A segment of new content (nobody else has it)."""
        return Segment(self.new_id(), tokens)

    def shared(self, key: tuple[object, ...], tokens: int) -> Segment:
        """The segment named `key`, created with `tokens` tokens on first use."""
        seg = self._named.get(key)
        if seg is None:
            seg = Segment(self.new_id(), tokens)
            self._named[key] = seg
        return seg


def check_positive(name: str, value: int) -> None:
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def check_range(name: str, lo: float, hi: float) -> None:
    """Validate a `(min, max)` parameter pair named `name_min` / `name_max`."""
    if lo < 0 or hi < lo:
        raise ValueError(f"{name}_min/{name}_max must satisfy 0 <= min <= max, got {lo}..{hi}")


def parse_floats(name: str, text: str) -> list[float]:
    """Parse a comma list such as "2,1" (tenant weights); an empty string means no list."""
    if not text.strip():
        return []
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"{name} must be a comma-separated list of numbers, got {text!r}") from None
    if any(v <= 0 or not math.isfinite(v) for v in values):
        raise ValueError(f"{name} entries must be positive numbers, got {text!r}")
    return values


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    weight: float


def tenant_sequence(n_programs: int, tenants: int, tenant_weights: str, tenant_mix: str) -> list[Tenant]:
    """Which tenant submits each program, in submission order.

    `tenant_weights` are the tenants' scheduling shares (fair-share weights); `tenant_mix` is how
    many programs each submits relative to the others (e.g. "10,1": the first submits 10x).
    Both default to equal. Counts are exact (largest remainder) and the tenants are interleaved
    evenly through the sequence, so no tenant's programs all arrive first.
    """
    check_positive("tenants", tenants)
    weights = parse_floats("tenant_weights", tenant_weights) or [1.0] * tenants
    mix = parse_floats("tenant_mix", tenant_mix) or [1.0] * tenants
    for name, values in (("tenant_weights", weights), ("tenant_mix", mix)):
        if len(values) != tenants:
            raise ValueError(f"{name} has {len(values)} entries but tenants={tenants}; give one per tenant")
    total = sum(mix)
    quotas = [n_programs * m / total for m in mix]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(tenants), key=lambda t: (-(quotas[t] - counts[t]), t))
    for t in by_remainder[: n_programs - sum(counts)]:
        counts[t] += 1
    # Place tenant t's k-th program at position (k + 0.5) / count_t of the run: an even interleave.
    slots = sorted(((k + 0.5) / counts[t], t) for t in range(tenants) for k in range(counts[t]))
    names = [Tenant(f"tenant-{t}", weights[t]) for t in range(tenants)]
    return [names[t] for _, t in slots]


def arrival_times(n_programs: int, rng: random.Random, arrival_rate: float) -> list[float]:
    """Submission times: all 0 (closed loop, the default) or a Poisson process.

    With `arrival_rate == 0` every program is submitted at t=0 and the driver's `concurrency`
    decides how many run at once (closed loop). With a positive rate (programs per second) the
    gaps are exponential: an open-loop Poisson arrival process.
    """
    if arrival_rate < 0:
        raise ValueError(f"arrival_rate must be >= 0 (0 = all at t=0), got {arrival_rate}")
    if arrival_rate == 0:
        return [0.0] * n_programs
    times: list[float] = []
    now = 0.0
    for _ in range(n_programs):
        times.append(now)
        now += rng.expovariate(arrival_rate)
    return times


def uniform_int(rng: random.Random, lo: int, hi: int) -> int:
    """An integer uniform in [lo, hi], inclusive."""
    return rng.randint(lo, hi)


def log_uniform_int(rng: random.Random, lo: int, hi: int) -> int:
    """An integer in [lo, hi] whose logarithm is uniform: small values common, large ones rarer.

    Tool outputs look like this: most are a screenful, a few are a whole file or test log.
    """
    if lo == hi:
        return lo
    value = math.exp(rng.uniform(math.log(max(lo, 1)), math.log(hi)))
    return min(hi, max(lo, round(value)))


@dataclass(frozen=True, slots=True)
class LatencyModel:
    """A lognormal latency: `median_s` is exp(mu); `sigma` the log-space std; capped at `cap_s`."""

    median_s: float
    sigma: float
    cap_s: float = 300.0

    def draw(self, rng: random.Random) -> float:
        return min(self.cap_s, rng.lognormvariate(math.log(self.median_s), self.sigma))


def weighted_choice(rng: random.Random, options: tuple[tuple[str, float], ...]) -> str:
    """Pick a name by its probability (the weights need not sum to 1)."""
    total = sum(w for _, w in options)
    x = rng.uniform(0.0, total)
    for name, weight in options:
        x -= weight
        if x <= 0:
            return name
    return options[-1][0]


def start_workload(
    count: int, seed: int, *, tenants: int, tenant_weights: str, tenant_mix: str, arrival_rate: float
) -> tuple[random.Random, SegmentIds, list[Tenant], list[float]]:
    """What every generator draws first, in this order (the order fixes the output for a seed):
    its random source, its segment-id counter, the tenant of each of `count` programs (or groups)
    and their arrival times."""
    rng = random.Random(seed)
    owners = tenant_sequence(count, tenants, tenant_weights, tenant_mix)
    return rng, SegmentIds(), owners, arrival_times(count, rng, arrival_rate)


def per_tenant_tokens(rng: random.Random, owners: list[Tenant], lo: int, hi: int) -> dict[str, int]:
    """One length per tenant (in order of first appearance), e.g. its shared system prompt."""
    return {t.name: uniform_int(rng, lo, hi) for t in dict.fromkeys(owners)}
