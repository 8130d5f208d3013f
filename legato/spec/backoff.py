"""How many drafted tokens a step should verify: speculation backs off when the step is
compute-bound.

A step that emits `E` tokens in expectation at a cost of `T(n)` seconds for its `n` tokens
delivers `E / T(n)` tokens per second. Candidate draft tokens are ranked by `p`, the probability
that the token *and every draft token before it* are accepted (only then does it add a token);
verifying the best `k` of them emits `base + P(k)` tokens (each decoding sequence's own token plus
the expected accepted drafts, `P(k)` the sum of the top `k` probabilities) for `T(base + k)`.
`plan_drafts` takes the `k` that maximises `(base + P(k)) / T_verify(base + k)`, and drafts at
all only when that beats plain decoding, `base / T_decode(base)`.

`T` is whatever the engine's steps measure (`StepCostModel`: per token count, learned online), not
a line: on the CPU a 2- or 3-row matrix product can cost more than a 4-row one, and at batch 1
a few extra tokens cost far less than a line through large steps says. Taking the best `k` over
the whole curve (not stopping at the first token whose marginal price looks too high) uses that
shape. At a large, compute-bound batch `T` grows about in proportion to the tokens and only
near-certain tokens pass: speculation backs off by itself. Nothing here is tuned: `T` is measured,
and `p` is the drafter's estimate calibrated by the program's acceptance history
(`AcceptanceCalibration`).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

EXACT_SIZES = 16  # step sizes up to this are priced each on its own (where small-matrix kernels
# change the shape step by step); above, a bucket spans a quarter octave (sizes within 19%),
# a resolution, not a fitted value: the cost of a large step changes little within it
BUCKETS_PER_OCTAVE = 4


def size_bucket(tokens: int) -> int:
    """The bucket a step of `tokens` tokens is priced in (and, in the speculator, the batch
    size its back-off state is kept for)."""
    if tokens <= EXACT_SIZES:
        return tokens
    return EXACT_SIZES + 1 + int(BUCKETS_PER_OCTAVE * math.log2(tokens / EXACT_SIZES))


@dataclass(slots=True)
class _Bucket:
    tokens: float  # mean step size of the steps in the bucket
    seconds: float  # their mean time
    count: int = 1


@dataclass(slots=True)
class StepCostModel:
    """Engine step time by the number of tokens the step computes, learned online: per size
    bucket, the mean step size and time of its recent steps (a running mean over the first
    `memory` steps of a bucket, then an exponential average of that memory, so it follows the
    machine and its load). Between measured sizes the cost is interpolated linearly; above the
    largest measured size `m` it grows at the average cost per token `T(m) / m` (for a cost
    that is concave with a fixed part, as an engine step's is, no step costs less per token
    than that: unmeasured large steps are never underpriced); below the smallest it is `T` of
    the smallest. Context length is not a term: over the steps the model remembers, a batch's
    contexts barely move. (`legato.cache.prefill_model` prices prompt tokens for the tier
    decision instead, per token with a context term; its docstring says why they differ.)

    The first step of each size bucket is not used (it pays one-time costs: allocations of
    that size, lazy kernel set-up, the run's first steps): kept, one slow first step would
    price its size out of every plan, and a size no plan picks is never measured again to
    correct it. Until its second step a bucket is priced from its neighbours. `memory`: about
    1 / (1 - 0.97), the window the step cost has always been averaged over, not a value
    searched on our workloads."""

    memory: float = 32.0  # steps a bucket's average remembers (math.inf: a plain mean)
    observations: int = 0
    _buckets: dict[int, _Bucket] = field(default_factory=dict)
    _warmed: set[int] = field(default_factory=set)  # buckets whose first (unused) step was seen
    _points: list[tuple[float, float]] = field(default_factory=list)  # (tokens, seconds), sorted

    def observe(self, tokens: int, seconds: float) -> None:
        """One step computed `tokens` tokens in `seconds`."""
        if tokens <= 0 or not seconds > 0:
            return
        self.observations += 1
        key = size_bucket(tokens)
        if key not in self._warmed:
            self._warmed.add(key)
            return
        b = self._buckets.get(key)
        if b is None:
            self._buckets[key] = _Bucket(float(tokens), seconds)
        else:
            b.count += 1
            w = 1.0 / min(b.count, self.memory)
            b.tokens += w * (tokens - b.tokens)
            b.seconds += w * (seconds - b.seconds)
        self._points = sorted((b.tokens, b.seconds) for b in self._buckets.values())

    @property
    def has_data(self) -> bool:
        return bool(self._points)

    def covers(self, tokens: int) -> bool:
        """Whether a step of `tokens` tokens is priced from measurements at least that large
        (not extrapolated: above the largest measured size `__call__` prices per token, which
        overprices a concave cost; where a high price favours the other choice, as a high
        plain-decode price favours verifying, measure the size instead)."""
        return bool(self._buckets) and size_bucket(tokens) <= max(self._buckets)

    @property
    def fitted(self) -> bool:
        """Whether steps of more than one size were measured (the curve has a shape)."""
        return len(self._points) >= 2

    def sizes(self) -> list[tuple[float, float]]:
        """The measured curve: (mean step size, mean seconds) per bucket, by size."""
        return list(self._points)

    def __call__(self, tokens: float) -> float:
        """Seconds of a step computing `tokens` tokens (0 with no data)."""
        pts = self._points
        if not pts:
            return 0.0
        n_hi, t_hi = pts[-1]
        if tokens >= n_hi:
            return t_hi * tokens / n_hi
        i = bisect.bisect_left(pts, (tokens, -math.inf))
        if i == 0:
            return pts[0][1]
        (n0, t0), (n1, t1) = pts[i - 1], pts[i]
        return t0 + (t1 - t0) * (tokens - n0) / (n1 - n0)


@dataclass(slots=True)
class AcceptanceCalibration:
    """How a program's drafts fare against what the drafter promised: observed accepted tokens /
    the sum of the drafter's acceptance estimates for the tokens it drafted. One pseudo-step of
    prior (the drafter taken at its word) keeps a new program from being judged on nothing."""

    promised: float = 1.0
    accepted: float = 1.0

    def record(self, probs: Sequence[float], accepted: int) -> None:
        self.promised += sum(probs)
        self.accepted += accepted

    def adjust(self, probs: Sequence[float]) -> list[float]:
        ratio = self.accepted / self.promised
        return [min(1.0, p * ratio) for p in probs]


def plan_drafts(
    candidates: Sequence[Sequence[float]], base: int, verify: StepCostModel, decode: StepCostModel
) -> list[int]:
    """How many tokens of each candidate draft the step should verify (see the module
    docstring). `candidates`: per sequence, each drafted token's probability of being accepted
    (cumulative, non-increasing); `base`: tokens the step computes anyway (its decodes).
    `verify` prices steps that verify drafts, `decode` steps that do not (an engine may run them
    on different code paths); when drafting cannot beat plain decoding, nothing is drafted.
    Without a measured verify model every draft is kept whole (it is being measured)."""
    if not verify.has_data:
        return [len(c) for c in candidates]
    order = sorted(
        ((p, i, j) for i, c in enumerate(candidates) for j, p in enumerate(c)),
        key=lambda t: (-t[0], t[2], t[1]),
    )
    # The best k drafted tokens are the first k of `order` (probabilities are non-increasing
    # along a draft, so its tokens come in order: every prefix of `order` is a set of prefixes).
    best_k, best_rate, expected = 0, 0.0, float(base)
    for k, (p, _, _) in enumerate(order, 1):
        expected += p
        rate = expected / verify(base + k)
        if rate > best_rate:
            best_k, best_rate = k, rate
    keep = [0] * len(candidates)
    if not best_k:
        return keep
    if decode.has_data and base and best_rate <= base / decode(base):
        return keep
    for _, i, j in order[:best_k]:
        keep[i] = max(keep[i], j + 1)
    return keep
