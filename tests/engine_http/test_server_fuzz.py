"""Property test of the engine server's whole OpenAPI surface (schemathesis strategies driven by
hypothesis): whatever a client sends, the answer is never a 5xx. Real socket, fake engine."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from legato.engine_adapter.server import create_engine_app
from tests.engine_http.fake_engine import FakeEngine
from tests.engine_http.serving import serve_in_thread


def test_no_request_gets_a_server_error() -> None:
    with serve_in_thread(create_engine_app(FakeEngine())) as url:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        checked = []
        for result in schema.get_all_operations():
            operation = result.ok()
            # Valid bodies (which reach the engine) and invalid ones (which must be a clean 4xx).
            cases = operation.as_strategy(generation_mode=GenerationMode.POSITIVE) | operation.as_strategy(
                generation_mode=GenerationMode.NEGATIVE
            )

            @given(case=cases)
            @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def call(case: Any) -> None:
                response = case.call(base_url=url, timeout=30)
                assert response.status_code < 500, (case.method, case.path, case.body, response.text[:300])

            call()
            checked.append(operation.path)
    assert "/v1/chat/completions" in checked and "/generate" in checked
