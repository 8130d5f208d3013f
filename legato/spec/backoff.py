"""How many drafted tokens a step should verify: speculation backs off when the step is
compute-bound.

A verify step costs more than a decode step by the price of its extra positions. With an engine
step costing `T = c + a * tokens` seconds (`c`: per-step work that does not grow with the batch
-- reading the weights, launching kernels, the Python around a step; `a`: the per-token work), a
step that emits `E` tokens in expectation delivers `E / T` tokens per second.
Adding one drafted token that is accepted with probability `p` (the probability that it *and
every draft token before it* are accepted: only then does it add a token) is worth it exactly
when it raises that ratio:

    (E + p) / (T + a) >= E / T   <=>   p * T >= E * a.

`plan_drafts` adds candidate draft tokens in order of decreasing `p` while this holds. At batch
1 on a memory-bound engine `c` dominates `T`, `a / T` is small and long drafts pass; at a large
batch `T` is mostly `a * tokens`, `E * a / T` is close to 1 and only near-certain tokens pass --
speculation backs off by itself. Nothing here is tuned: `c` and `a` are fitted online from the
engine's own step times (`StepCostModel`, one for steps that verify drafts and one for plain
decode steps, which an engine may run on another code path), and `p` is the drafter's estimate
calibrated by the program's acceptance history (`AcceptanceCalibration`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(slots=True)
class StepCostModel:
    """Engine step time `c + a * tokens`, an exponentially weighted least-squares fit over recent
    steps of one kind (so it follows the machine and its load). Context length is not a term:
    over the few dozen steps the fit remembers, a batch's contexts barely move, and a third term
    nearly collinear with the token count would make the fit unstable.

    The first step of a kind is not used (it pays one-time costs: allocations, lazy kernel
    set-up). `fitted` needs more steps than parameters (so a single outlier cannot define the
    line), a determined split (steps of different sizes) and a physical one (`a` > 0; a negative `c`,
    noise, is refitted as 0).
    Unfitted, a model with data prices every step at its recent mean time."""

    decay: float = 0.97  # weight of older steps (about the last 30 steps count)
    per_step_s: float = 0.0
    per_token_s: float = 0.0
    fitted: bool = False
    observations: int = 0
    _s: list[float] = field(default_factory=lambda: [0.0] * 5)  # sum w, w*n, w*n^2, w*t, w*n*t

    @property
    def memory(self) -> float:
        """How many recent steps the fit effectively remembers (1 / (1 - decay))."""
        return 1.0 / (1.0 - self.decay)

    def observe(self, tokens: int, seconds: float) -> None:
        """One step computed `tokens` tokens in `seconds`."""
        if tokens <= 0 or not seconds > 0:
            return
        self.observations += 1
        if self.observations == 1:
            return
        s, d, n = self._s, self.decay, float(tokens)
        for i, v in enumerate((1.0, n, n * n, seconds, n * seconds)):
            s[i] = d * s[i] + v
        det = s[0] * s[2] - s[1] * s[1]
        self.fitted = False
        if self.observations <= 3 or det <= 1e-9 * s[0] * s[2]:
            return  # too few steps, or every step the same size: the split is not determined
        a = (s[0] * s[4] - s[1] * s[3]) / det
        c = (s[3] - a * s[1]) / s[0]
        if c < 0:  # no fixed cost shows (noise put the line below the origin): fit a alone
            c, a = 0.0, s[4] / s[2]
        if a > 0:
            self.per_step_s, self.per_token_s, self.fitted = c, a, True

    @property
    def has_data(self) -> bool:
        return self._s[0] > 0

    def __call__(self, tokens: int) -> float:
        """Seconds of a step computing `tokens` tokens (unfitted: the recent mean step)."""
        if not self.fitted:
            return self._s[3] / self._s[0] if self._s[0] > 0 else 0.0
        return self.per_step_s + self.per_token_s * tokens


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
    Without a fitted verify model every draft is kept whole (it is being measured)."""
    if not verify.fitted:
        return [len(c) for c in candidates]
    keep = [0] * len(candidates)
    expected, tokens = float(base), base
    order = sorted(
        ((p, i, j) for i, c in enumerate(candidates) for j, p in enumerate(c)),
        key=lambda t: (-t[0], t[2], t[1]),
    )
    for p, i, j in order:
        if j != keep[i]:  # an earlier token of this draft was not taken: neither is this one
            continue
        if p * verify(tokens) < expected * verify.per_token_s:
            break  # later candidates promise no more: the ratio only falls from here
        keep[i] += 1
        expected += p
        tokens += 1
    if decode.has_data and base and expected / verify(tokens) <= base / decode(base):
        return [0] * len(candidates)
    return keep
