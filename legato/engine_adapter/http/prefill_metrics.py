"""A vLLM server's prefill cost per token, read from its own `/metrics`.

Why: a scheduler weighs recomputing a context against holding its KV. Without the engine's
prefill cost it can only measure an upper bound (busy time over every token computed, decode
tokens included: several times too dear), and every such decision then leans toward holding.
vLLM times each request's prefill phase: `vllm:request_prefill_time_seconds` (first scheduled
to first token, a histogram whose `_count` is the requests) and, since v0.11,
`vllm:request_prefill_kv_computed_tokens` (prompt tokens that phase computed, prefix-cache hits
excluded); older servers give the prompt tokens and prefix-cache hits as counters
(`vllm:prompt_tokens_total`, `vllm:prefix_cache_hits_total`), whose difference is the same count.

A request's prefill phase lasts at least the step it finishes in, whatever its length: that
step also decodes every running sequence, and requests prefilled together each count all of
it. Seconds over tokens therefore prices a short appended prompt (an agent's tool output) at a
whole decode step, many times its cost. So each scrape's increments are one observation of
`seconds ~ c x requests + a x tokens`, fitted by least squares (`TwoTermFit`, forgetting as the
torch engine's own fit does): `a` is what one more prompt token costs, the price of recomputing
context; `c` is the step a request waits in anyway. Until requests of different lengths have
told the two apart, seconds over tokens is used (an upper bound). Increments count from the first
scrape this client saw, so a server's warm-up stays out. No separate context term: the average
is over the prompts the server saw, at their depths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from legato.cache.prefill_model import DECAY
from legato.cache.two_term_fit import TwoTermFit
from legato.engine_adapter.http.spec_counters import Samples

PREFILL_SECONDS = "vllm:request_prefill_time_seconds_sum"
PREFILL_REQUESTS = "vllm:request_prefill_time_seconds_count"
PREFILL_TOKENS = "vllm:request_prefill_kv_computed_tokens_sum"
PROMPT_TOKENS = "vllm:prompt_tokens_total"
PREFIX_HITS = "vllm:prefix_cache_hits_total"


@dataclass(slots=True)
class PrefillFromMetrics:
    """Seconds per prefilled token (`observe` each `/metrics` read; see the module docstring)."""

    per_token_s: float | None = None  # None until a prefill was seen
    _last: tuple[float, float, float] | None = None  # (seconds, requests, tokens) at the last scrape
    _total: list[float] = field(default_factory=lambda: [0.0, 0.0])  # seconds, tokens since the first
    _fit: TwoTermFit = field(default_factory=lambda: TwoTermFit(DECAY))

    def observe(self, metrics: Samples) -> None:
        seconds, requests = _sum(metrics, PREFILL_SECONDS), _sum(metrics, PREFILL_REQUESTS)
        tokens = _sum(metrics, PREFILL_TOKENS)
        if tokens is None:
            prompt, hits = _sum(metrics, PROMPT_TOKENS), _sum(metrics, PREFIX_HITS)
            tokens = None if prompt is None else prompt - (hits or 0.0)
        if seconds is None or requests is None or tokens is None:
            return
        now = (seconds, requests, tokens)
        last, self._last = self._last, now
        if last is None or any(n < b for n, b in zip(now, last, strict=True)):
            return  # the first scrape, or the server restarted: a new baseline
        dt_s, dt_requests, dt_tokens = (n - b for n, b in zip(now, last, strict=True))
        if dt_requests <= 0.0 or dt_tokens <= 0.0 or dt_s <= 0.0:
            return
        self._fit.add(dt_requests, dt_tokens, dt_s)
        self._total[0] += dt_s
        self._total[1] += dt_tokens
        solved = self._fit.solve()
        self.per_token_s = solved[1] if solved is not None else self._total[0] / self._total[1]


def _sum(metrics: Samples, name: str) -> float | None:
    """The metric summed over its label sets (one per engine core and model); None when the
    server does not export it or exports no finite non-negative sample."""
    values = [v for _, v in metrics.get(name, ()) if math.isfinite(v) and v >= 0.0]
    return sum(values) if values else None
