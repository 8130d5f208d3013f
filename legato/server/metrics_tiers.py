"""Per-tier Prometheus families (device, host RAM, Redis) for `/metrics`.

One series per replica and tier that exists: blocks and bytes resident (where the tier can say),
capacity, tokens loaded from it, blocks offloaded / written to it, bytes moved, and how often the
tier manager chose to load rather than recompute. The numbers come from `tier_stats`, the same
snapshot the `/ui` replicas panel shows, so the page and a Grafana board agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from legato.server.tier_stats import replica_tiers


def tier_families(engines: Sequence[Any], stats_list: Sequence[object | None]) -> Iterable[Metric]:
    labels = ["replica", "tier"]
    blocks = GaugeMetricFamily("legato_tier_blocks", "KV blocks resident in a tier.", labels=labels)
    used = GaugeMetricFamily("legato_tier_bytes", "KV bytes resident in a tier.", labels=labels)
    capacity = GaugeMetricFamily("legato_tier_capacity_bytes", "Capacity of a tier in bytes.", labels=labels)
    loaded = CounterMetricFamily(
        "legato_tier_loaded_tokens",
        "Prompt tokens served from a tier (device: every cached prompt token).",
        labels=labels,
    )
    offloaded = CounterMetricFamily(
        "legato_tier_offloaded_blocks",
        "KV blocks written to a tier (host: evicted device blocks; redis: prefilled chunks' blocks).",
        labels=labels,
    )
    written = CounterMetricFamily("legato_tier_written_bytes", "Bytes written to a tier.", labels=labels)
    read = CounterMetricFamily("legato_tier_read_bytes", "Bytes read back from a tier.", labels=labels)
    choices = CounterMetricFamily(
        "legato_tier_load_choices",
        "Prefix fetches by the tier manager's choice: load from a tier, or recompute (cheaper).",
        labels=["replica", "choice"],
    )
    any_tier = False
    for i, engine in enumerate(engines):
        stats = stats_list[i] if i < len(stats_list) else None
        rt = replica_tiers(engine, stats)
        rep = str(i)
        for t in rt.tiers:
            any_tier = True
            key = [rep, t.tier]
            if t.blocks is not None:
                blocks.add_metric(key, t.blocks)
            if t.bytes_used is not None:
                used.add_metric(key, t.bytes_used)
            if t.capacity_bytes is not None:
                capacity.add_metric(key, t.capacity_bytes)
            loaded.add_metric(key, t.loaded_tokens)
            if t.tier != "device":
                offloaded.add_metric(key, t.offloaded_blocks)
            if t.tier == "redis":  # the host tier counts no bytes moved, only what it holds
                written.add_metric(key, t.written_bytes)
                read.add_metric(key, t.read_bytes)
        if len(rt.tiers) > 1:
            choices.add_metric([rep, "load"], rt.load_choices)
            choices.add_metric([rep, "recompute"], rt.recompute_choices)
    if any_tier:
        yield from (blocks, used, capacity, loaded, offloaded, written, read, choices)


__all__ = ["tier_families"]
