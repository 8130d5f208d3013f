"""Engine work counters per replica for `/metrics`: what each engine computed, not what it was
asked. Prompt tokens run through the model (`prefill_tokens`: prefix-cache hits and forked
samples excluded), samples that started from a forked prompt, preemptions (a running sequence
lost its blocks and recomputes) and evicted blocks. They are what shows whether a policy saves
work: an RL group's prompt prefilled once per replica, a rollout's context kept through its tool
calls instead of recomputed. Engines without these counters (HTTP engines) report nothing."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client.core import CounterMetricFamily, Metric

# (stats attribute, metric name, help)
_COUNTERS = (
    ("prefill_tokens", "legato_engine_prefill_tokens", "Prompt tokens computed (hits and forks excluded)."),
    ("forked_samples", "legato_engine_forked_samples", "Samples of n > 1 requests started from a fork."),
    ("preemptions", "legato_engine_preemptions", "Running sequences preempted (their KV recomputed later)."),
    ("evictions", "legato_engine_evicted_blocks", "Cached KV blocks evicted to make room."),
)


def work_families(stats_list: Sequence[object | None]) -> Iterable[Metric]:
    families = [(attr, CounterMetricFamily(name, text, labels=["replica"])) for attr, name, text in _COUNTERS]
    seen = False
    for i, stats in enumerate(stats_list):
        for attr, family in families:
            value = getattr(stats, attr, None)
            if isinstance(value, int) and not isinstance(value, bool):
                family.add_metric([str(i)], value)
                seen = True
    if seen:
        yield from (family for _, family in families)


__all__ = ["work_families"]
