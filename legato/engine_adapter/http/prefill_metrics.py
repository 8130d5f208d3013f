"""A vLLM or SGLang server's prefill cost per token, read from its own `/metrics`.

Why: a scheduler weighs recomputing a context against holding its KV. Without the engine's
prefill cost it can only measure an upper bound (busy time over every token computed, decode
tokens included: several times too dear), and every such decision then leans toward holding.

What each server tells (`vllm_totals`, `sglang_totals`: running totals of prefill seconds,
requests and prompt tokens computed):
- vLLM times each request's prefill phase: `vllm:request_prefill_time_seconds` (first scheduled
  to first token, a histogram whose `_count` is the requests) and, since v0.11,
  `vllm:request_prefill_kv_computed_tokens` (prompt tokens that phase computed, prefix-cache
  hits excluded); older servers give the prompt tokens and prefix-cache hits as counters
  (`vllm:prompt_tokens_total`, `vllm:prefix_cache_hits_total`), whose difference is the same.
- SGLang times the first token from the request's arrival (`sglang:time_to_first_token_seconds`),
  waiting included, and the wait itself (`sglang:queue_time_seconds`: waiting queue to first
  forward pass); their difference is the prefill phase. Tokens computed are
  `sglang:prompt_tokens_total` less `sglang:cached_tokens_total`. SGLang counts tokens when a
  request finishes and the first token when it comes, so one scrape's increments can mix
  requests; the fit below averages that out over scrapes.

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
from collections.abc import Callable
from dataclasses import dataclass, field

from legato.cache.prefill_model import DECAY
from legato.cache.two_term_fit import TwoTermFit
from legato.engine_adapter.http.spec_counters import Samples

PREFILL_SECONDS = "vllm:request_prefill_time_seconds_sum"
PREFILL_REQUESTS = "vllm:request_prefill_time_seconds_count"
PREFILL_TOKENS = "vllm:request_prefill_kv_computed_tokens_sum"
PROMPT_TOKENS = "vllm:prompt_tokens_total"
PREFIX_HITS = "vllm:prefix_cache_hits_total"
SGLANG_TTFT_SECONDS = "sglang:time_to_first_token_seconds_sum"
SGLANG_TTFT_REQUESTS = "sglang:time_to_first_token_seconds_count"
SGLANG_QUEUE_SECONDS = "sglang:queue_time_seconds_sum"
SGLANG_PROMPT_TOKENS = "sglang:prompt_tokens_total"
SGLANG_CACHED_TOKENS = "sglang:cached_tokens_total"

Totals = tuple[float, float, float]  # prefill seconds, requests, prompt tokens computed (running sums)


def vllm_totals(metrics: Samples) -> Totals | None:
    """A vLLM server's prefill totals (module docstring); None when it does not export them."""
    seconds, requests = _sum(metrics, PREFILL_SECONDS), _sum(metrics, PREFILL_REQUESTS)
    tokens = _sum(metrics, PREFILL_TOKENS)
    if tokens is None:
        prompt, hits = _sum(metrics, PROMPT_TOKENS), _sum(metrics, PREFIX_HITS)
        tokens = None if prompt is None else prompt - (hits or 0.0)
    if seconds is None or requests is None or tokens is None:
        return None
    return seconds, requests, tokens


def sglang_totals(metrics: Samples) -> Totals | None:
    """An SGLang server's prefill totals: time to first token less time queued (module
    docstring); None without either histogram (an older server, or `--enable-metrics` off)."""
    ttft, requests = _sum(metrics, SGLANG_TTFT_SECONDS), _sum(metrics, SGLANG_TTFT_REQUESTS)
    queued = _sum(metrics, SGLANG_QUEUE_SECONDS, _lead_rank)
    prompt = _sum(metrics, SGLANG_PROMPT_TOKENS)
    if ttft is None or requests is None or queued is None or prompt is None:
        return None
    return max(0.0, ttft - queued), requests, prompt - (_sum(metrics, SGLANG_CACHED_TOKENS) or 0.0)


def _lead_rank(labels: dict[str, str]) -> bool:
    """A sample of an SGLang scheduler that leads its data-parallel group: with
    `--enable-metrics-for-all-schedulers` every tensor- and pipeline-parallel rank records the
    same requests (`tp_rank`, `pp_rank` labels), and only one of them may count."""
    return labels.get("tp_rank", "0") == "0" and labels.get("pp_rank", "0") == "0"


@dataclass(slots=True)
class PrefillFromMetrics:
    """Seconds per prefilled token (`observe` each `/metrics` read; see the module docstring).
    `read` picks the server's totals out of a scrape (`vllm_totals`, `sglang_totals`)."""

    read: Callable[[Samples], Totals | None] = vllm_totals
    per_token_s: float | None = None  # None until a prefill was seen
    _last: Totals | None = None  # the totals at the last scrape
    _total: list[float] = field(default_factory=lambda: [0.0, 0.0])  # seconds, tokens since the first
    _fit: TwoTermFit = field(default_factory=lambda: TwoTermFit(DECAY))

    def observe(self, metrics: Samples) -> None:
        now = self.read(metrics)
        if now is None:
            return
        last = self._last
        if last is None or now[1] < last[1] or now[2] < last[2]:
            self._last = now  # the first scrape, or the server restarted: a new baseline
            return
        dt_s, dt_requests, dt_tokens = (n - b for n, b in zip(now, last, strict=True))
        if dt_requests <= 0.0 or dt_tokens <= 0.0 or dt_s <= 0.0:
            return  # nothing whole to learn yet: the increments carry over to the next scrape
        self._last = now
        self._fit.add(dt_requests, dt_tokens, dt_s)
        self._total[0] += dt_s
        self._total[1] += dt_tokens
        solved = self._fit.solve()
        self.per_token_s = solved[1] if solved is not None else self._total[0] / self._total[1]

    def costs(self) -> tuple[float, float] | None:
        """`PrefillCostEngine.prefill_costs()`: (seconds per prompt token, 0: no separate
        context term), None until the server prefilled something since the first scrape."""
        return None if self.per_token_s is None else (self.per_token_s, 0.0)


def _sum(
    metrics: Samples, name: str, keep: Callable[[dict[str, str]], bool] = lambda _: True
) -> float | None:
    """The metric summed over its label sets that `keep` accepts (one per engine core, model or
    data-parallel rank); None when the server does not export it or exports no finite
    non-negative sample."""
    values = [v for labels, v in metrics.get(name, ()) if keep(labels) and math.isfinite(v) and v >= 0.0]
    return sum(values) if values else None
