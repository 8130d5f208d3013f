"""/metrics of the whole REST app (real socket, the real-time simulated engine): valid Prometheus
text, program gauges that follow a proxied program through its tool call, release and idle
expiry, per-tenant service, and route templates (not raw paths) as labels."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from legato.sim.realtime import RealtimeSimConfig, RealtimeSimEngine
from tests.server.proxy_harness import Served, legato_server, metric, scrape

FAMILIES = {
    "legato_queue_depth",
    "legato_running_calls",
    "legato_scheduler_runs",
    "legato_programs",
    "legato_kv_blocks",
    "legato_cache_hit_tokens",
    "legato_cache_hit_rate",
    "legato_tenant_tokens",
    "legato_program_tct_seconds",
    "legato_llm_call_duration_seconds",
    "legato_http_requests",
    "process_resident_memory_bytes",
}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    engine = RealtimeSimEngine(RealtimeSimConfig(time_scale=0.0, max_model_len=4096))
    with legato_server(tmp_path, engine, policy="thunderagent", tenants=("acme",)) as s:
        yield s


def _chat(served: Served, program_id: str, **hints: object) -> httpx.Response:
    body = {
        "model": "sim-llama-3.1-8b",
        "messages": [
            {"role": "system", "content": "You are an agent. " * 10},
            {"role": "user", "content": "go"},
        ],
        "max_tokens": 4,
        "program_id": program_id,
        **hints,
    }
    return httpx.post(
        f"{served.url}/v1/chat/completions", json=body, headers=served.headers("acme"), timeout=60
    )


def test_exposition_is_valid_prometheus_text_with_every_family(served: Served) -> None:
    assert _chat(served, "a").status_code == 200
    text = scrape(served.url)
    names = {family.name for family in text_string_to_metric_families(text)}
    assert not FAMILIES - names, FAMILIES - names
    tenant = served.tenant_ids["acme"]
    assert metric(text, "legato_tenant_tokens_total", tenant=tenant, kind="completion") == 4
    assert metric(text, "legato_llm_call_duration_seconds_count", source="proxy") == 1


def test_program_gauges_follow_a_program_between_calls(served: Served) -> None:
    assert _chat(served, "p", next_tool="pytest", expected_tool_latency_s=1.0).status_code == 200
    text = scrape(served.url)
    assert metric(text, "legato_programs", state="between_calls") == 1
    assert metric(text, "legato_programs", state="active") == 0
    assert metric(text, "legato_scheduler_runs", state="live") == 1
    second = _chat(served, "p").json()
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] > 0  # the first turn's prefix
    assert (
        httpx.post(
            f"{served.url}/v1/programs/p/release", headers=served.headers("acme"), timeout=30
        ).status_code
        == 200
    )
    text = scrape(served.url)
    assert metric(text, "legato_programs", state="between_calls") == 0
    assert metric(text, "legato_scheduler_runs", state="live") == 0
    assert metric(text, "legato_proxy_programs_finished_total", why="released") == 1
    assert metric(text, "legato_program_tct_seconds_count", source="proxy", status="succeeded") == 1
    assert metric(text, "legato_cache_hit_tokens_total", tier="device") > 0


def test_idle_programs_expire_at_the_next_scrape(served: Served) -> None:
    assert _chat(served, "forgotten").status_code == 200
    served.state.extras["proxy"].tracker.idle_timeout_s = 0.0
    text = scrape(served.url)
    assert metric(text, "legato_proxy_programs_finished_total", why="idle") == 1
    assert metric(text, "legato_program_tct_seconds_count", source="proxy", status="cancelled") == 1


def test_request_counters_use_route_templates(served: Served) -> None:
    headers = served.headers("acme")
    for i in range(3):
        httpx.post(f"{served.url}/v1/programs/nope-{i}/release", headers=headers, timeout=30)
    httpx.get(f"{served.url}/no/such/path/{'x' * 50}", timeout=30)
    text = scrape(served.url)
    route = "/v1/programs/{program_id}/release"
    assert metric(text, "legato_http_requests_total", route=route, status="404") == 3
    assert metric(text, "legato_http_requests_total", route="unmatched", status="404") == 1
    assert "nope-1" not in text and "xxxxx" not in text


def test_workflow_runs_count_in_the_tenants_service(served: Served) -> None:
    from legato.bench.load_bench import workflow_spec

    body = {"program": workflow_spec(2, 3, "You are a planner. " * 5), "inputs": {"task": "plan"}}
    with httpx.Client(base_url=served.url, headers=served.headers("acme"), timeout=60) as http:
        created = http.post("/v1/runs", json=body)
        assert created.status_code == 201, created.text
        with http.stream("GET", f"/v1/runs/{created.json()['id']}/events") as events:
            kinds = [line.split(": ", 1)[1] for line in events.iter_lines() if line.startswith("event: ")]
    assert kinds[-1] == "run_finished"
    text = scrape(served.url)
    tenant = served.tenant_ids["acme"]
    assert metric(text, "legato_tenant_tokens_total", tenant=tenant, kind="completion") == 2 * 3
    assert metric(text, "legato_tenant_tokens_total", tenant=tenant, kind="prompt") > 0
    assert metric(text, "legato_program_tct_seconds_count", source="workflow", status="succeeded") == 1


async def test_host_tier_hits_are_exposed_per_tier() -> None:
    """The torch engine with a host-RAM tier and a device cache too small for two prompts: the
    first prompt's blocks are evicted to host RAM and loaded back for its second call."""
    from legato.engine_adapter.base import GenerateRequest, SamplingParams, collect
    from legato.engine_adapter.torch import load_engine
    from legato.server.metrics import ServiceMetrics, Sources

    engine = load_engine(None, num_blocks=40, host_tier_bytes=64 << 20, seed=0)
    async with engine:
        metrics = ServiceMetrics(Sources(engines=[engine]), process=False)
        a = tuple(bytes(range(97, 123)) * 16)[:400]
        b = tuple(bytes(range(65, 91)) * 16)[:400]
        for rid, prompt in (("a1", a), ("b1", b)):
            await collect(engine, GenerateRequest(rid, prompt, SamplingParams(max_tokens=4)))
        tiers = engine.core.tiers
        assert tiers is not None
        with anyio.fail_after(30):  # evicted blocks are queued to the tier's writer thread ...
            while not tiers.stats.queued_writes:  # noqa: ASYNC110 - a counter of another thread
                await anyio.sleep(0.05)
        assert await anyio.to_thread.run_sync(tiers.flush, 30.0)  # ... and written to host RAM
        again = await collect(engine, GenerateRequest("a2", a, SamplingParams(max_tokens=4)))
        text = (await metrics.render()).decode()
    host = metric(text, "legato_cache_hit_tokens_total", tier="host")
    assert host > 0 and again.cached_tokens >= host
    assert metric(text, "legato_cache_hit_rate", tier="host") == host / metric(
        text, "legato_cache_lookup_tokens_total"
    )
