"""Speculative decoding counters per replica for `/metrics` (engines that draft: the torch
engine with a speculator). Acceptance is accepted / drafted tokens; the `/ui` replicas panel
shows the same ratio since start."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client.core import CounterMetricFamily, Metric


def spec_families(stats_list: Sequence[object | None]) -> Iterable[Metric]:
    drafted = CounterMetricFamily(
        "legato_spec_draft_tokens", "Tokens drafted by speculative decoding.", labels=["replica"]
    )
    accepted = CounterMetricFamily(
        "legato_spec_accepted_tokens", "Drafted tokens the target model accepted.", labels=["replica"]
    )
    steps = CounterMetricFamily(
        "legato_spec_verify_steps", "Engine steps that verified a draft.", labels=["replica"]
    )
    seen = False
    for i, stats in enumerate(stats_list):
        n = getattr(stats, "spec_drafts", None)
        if not isinstance(n, int) or n == 0:
            continue
        seen = True
        steps.add_metric([str(i)], n)
        drafted.add_metric([str(i)], getattr(stats, "spec_draft_tokens", 0))
        accepted.add_metric([str(i)], getattr(stats, "spec_accepted_tokens", 0))
    if seen:
        yield from (steps, drafted, accepted)


__all__ = ["spec_families"]
