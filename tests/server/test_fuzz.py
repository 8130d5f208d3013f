"""Property test of the whole REST app's OpenAPI surface (workflows, runs, events, health, the
OpenAI-compatible proxy, /metrics): schemathesis generates valid and invalid requests from the
schema, and whatever a client sends, the answer is never a 5xx. Real socket; the engine is the
real-time simulator with sleeping off (`time_scale=0`), so generated calls finish at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from legato.sim.realtime import RealtimeSimConfig, RealtimeSimEngine
from tests.server.proxy_harness import legato_server

EXAMPLES = 20  # per operation and mode: bounded so the suite stays fast


def test_no_request_to_the_service_gets_a_server_error(tmp_path: Path) -> None:
    engine = RealtimeSimEngine(RealtimeSimConfig(time_scale=0.0, max_model_len=2048))
    with legato_server(tmp_path, engine, policy="continuum", tenants=("acme",)) as served:
        headers = served.headers("acme")
        schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json")
        checked = []
        for result in schema.get_all_operations():
            operation = result.ok()
            cases = operation.as_strategy(generation_mode=GenerationMode.POSITIVE) | operation.as_strategy(
                generation_mode=GenerationMode.NEGATIVE
            )

            @given(case=cases)
            @settings(
                max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None
            )
            def call(case: Any) -> None:
                # streams (SSE of runs) are bounded by the read timeout; a timeout is not a 5xx
                response = case.call(base_url=served.url, headers=headers, timeout=30)
                assert response.status_code < 500, (case.method, case.path, case.body, response.text[:300])

            call()
            checked.append(f"{operation.method.upper()} {operation.path}")
    for expected in (
        "POST /v1/chat/completions",
        "POST /v1/completions",
        "GET /v1/models",
        "POST /v1/programs/{program_id}/release",
        "GET /metrics",
        "POST /v1/programs",
        "POST /v1/runs",
    ):
        assert expected in checked, checked
