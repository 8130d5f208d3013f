"""/metrics under `passthrough` and under `legato`, with host RAM and Redis KV tiers on (tiny torch
engine, real Redis, real socket): both carry the queue and running-call gauges, busy seconds, and
per-tier series for device, host and Redis (blocks, bytes, loads, offloads, load-vs-recompute
choices); the text parses with `prometheus_client.parser`, and every series the Grafana board in
deploy/ queries is there."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from legato.engine_adapter.torch import load_engine
from tests.server.proxy_harness import legato_server, scrape
from tests.server.serving import TINY

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "legato-dashboard.json"


def _samples(text: str) -> dict[str, set[tuple[tuple[str, str], ...]]]:
    """Sample name -> its label sets; every family name is a key too (histograms, empty ones)."""
    out: dict[str, set[tuple[tuple[str, str], ...]]] = {}
    for family in text_string_to_metric_families(text):
        out.setdefault(family.name, set())
        for sample in family.samples:
            out.setdefault(sample.name, set()).add(tuple(sorted(sample.labels.items())))
    return out


def _has(samples: dict[str, set[tuple[tuple[str, str], ...]]], name: str, **labels: str) -> bool:
    want = set(labels.items())
    return any(want <= set(found) for found in samples.get(name, ()))


@pytest.mark.parametrize("policy", ["passthrough", "legato"])
def test_every_policy_reports_queue_running_and_every_tier(
    policy: str, redis_url: str, tmp_path: Path
) -> None:
    engine = load_engine(
        model_config=TINY,
        num_blocks=24,
        max_num_batched_tokens=256,
        host_tier_bytes=16 << 20,
        redis_url=redis_url,
        redis_chunk_blocks=2,
        redis_op_timeout_s=1.0,
    )
    with legato_server(tmp_path, engine, policy=policy, tenants=("acme",)) as served:
        for i in range(4):  # distinct long prompts: the small device cache evicts to the tiers
            body = {
                "model": "legato-default",
                "messages": [{"role": "user", "content": f"{i} " + "tiered context " * 12}],
                "max_tokens": 3,
                "program_id": f"p{i}",
            }
            r = httpx.post(
                f"{served.url}/v1/chat/completions", json=body, headers=served.headers("acme"), timeout=60
            )
            assert r.status_code == 200, r.text
        samples = _samples(scrape(served.url))
    assert _has(samples, "legato_queue_depth", stage="policy")
    assert _has(samples, "legato_queue_depth", stage="engine")
    assert _has(samples, "legato_running_calls")
    assert _has(samples, "legato_scheduler_runs", state="paused")
    assert _has(samples, "legato_replica_busy_seconds_total", replica="0")
    for tier in ("device", "host", "redis"):
        assert _has(samples, "legato_tier_loaded_tokens_total", replica="0", tier=tier), tier
    for tier in ("device", "host"):
        assert _has(samples, "legato_tier_blocks", tier=tier)
        assert _has(samples, "legato_tier_bytes", tier=tier)
    for tier in ("host", "redis"):
        assert _has(samples, "legato_tier_offloaded_blocks_total", tier=tier)
    assert _has(samples, "legato_tier_capacity_bytes", tier="host")
    assert _has(samples, "legato_tier_written_bytes_total", tier="redis")
    for choice in ("load", "recompute"):
        assert _has(samples, "legato_tier_load_choices_total", choice=choice)
    # the Grafana board's panels read series this server exports (speculation: only engines
    # that draft; decisions: only a policy that decides)
    queried = set(re.findall(r"legato_[a-z_]+", DASHBOARD.read_text()))
    optional = {"legato_spec_", "legato_scheduler_decisions"} if policy == "passthrough" else {"legato_spec_"}
    for name in queried:
        if not any(name.startswith(o) for o in optional):
            assert name in samples or re.sub(r"_(bucket|total)$", "", name) in samples, name
