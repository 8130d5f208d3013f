"""Issue 18's inputs that broke a request, each now a 4xx with a message (never a 500, a 504 or
a hang), over real HTTP: the REST service and its OpenAI proxy (one app), and the engine server.
Bodies are sent as raw text, so they hold exactly what a client could send (`\\ud800` escapes,
`NaN` literals), not what Python's JSON encoder would write."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from legato.engine_adapter.server import create_engine_app
from legato.sim.realtime import RealtimeSimConfig, RealtimeSimEngine
from tests.engine_http.serving import serve_in_thread
from tests.server.proxy_harness import Served, legato_server

LONE = '"a\\ud800b"'  # a JSON string holding a lone surrogate, as raw JSON text
MODEL = "sim-llama-3.1-8b"  # the simulated engine's name


def fill(template: str, *values: str) -> str:
    """`template` with each `%s` replaced by the next value: raw JSON text, written as sent."""
    for value in values:
        template = template.replace("%s", value, 1)
    return template


def _program(**llm: Any) -> dict[str, Any]:
    node = {"kind": "llm", "name": "a", "prompt": {"slots": [{"var": "q"}]}, "output": "out", **llm}
    return {"name": "p", "state": [{"name": "q"}, {"name": "out"}], "nodes": [node], "entry": "a"}


def _engine() -> RealtimeSimEngine:
    return RealtimeSimEngine(RealtimeSimConfig(time_scale=0.0, max_model_len=2048))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with legato_server(tmp_path_factory.mktemp("hardening"), _engine(), tenants=("acme",)) as s:
        yield s


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, headers=served.headers("acme"), timeout=20) as c:
        yield c


def _refused(response: httpx.Response, status: int, *words: str) -> str:
    assert response.status_code == status, response.text[:500]
    message: str = response.json()["error"]["message"]
    for word in words:
        assert word in message, message
    return message


def _raw(client: httpx.Client, path: str, text: str) -> httpx.Response:
    return client.post(path, content=text.encode("utf-8"), headers={"Content-Type": "application/json"})


CHAT = '{"model": "sim-llama-3.1-8b", "messages": [{"role": "user", "content": %s}], "max_tokens": 2}'


def test_lone_surrogates_are_refused_on_every_kind_of_string(client: httpx.Client) -> None:
    program = json.dumps(_program())
    bodies = {
        "/v1/programs": fill('{"program": %s}', program.replace('"name": "p"', f'"name": {LONE}')),
        "/v1/runs": fill('{"program": %s, "inputs": {"q": %s}}', program, LONE),
    }
    for path, body in bodies.items():
        _refused(_raw(client, path, body), 422, "lone surrogate", "valid Unicode")
    metadata = fill('{"program": %s, "metadata": {%s: "x"}}', program, LONE)  # a key, too
    _refused(_raw(client, "/v1/runs", metadata), 422, "metadata", "lone surrogate")
    _refused(
        _raw(client, "/v1/chat/completions", fill(CHAT, LONE)), 400, "messages.0.content", "lone surrogate"
    )
    completion = fill('{"model": "sim-llama-3.1-8b", "prompt": %s, "max_tokens": 2}', LONE)
    _refused(_raw(client, "/v1/completions", completion), 400, "lone surrogate")
    # a surrogate encoded straight in UTF-8 bytes (not an escape) is not UTF-8 at all
    raw = b'{"program_id": "\xed\xa0\x80"}'
    response = client.post("/v1/runs", content=raw, headers={"Content-Type": "application/json"})
    _refused(response, 422, "not UTF-8")
    # a correctly paired surrogate escape is an ordinary character
    ok = _raw(client, "/v1/chat/completions", CHAT % '"smile \\ud83d\\ude00"')
    assert ok.status_code == 200, ok.text


def test_non_finite_and_overflowing_numbers_are_refused(client: httpx.Client) -> None:
    for literal in ("NaN", "Infinity", "-Infinity", "1e400"):
        body = fill(
            '{"model": "sim-llama-3.1-8b", "prompt": "hi", "max_tokens": 2, "temperature": %s}', literal
        )
        _refused(_raw(client, "/v1/completions", body), 400, "finite number")
        run = fill('{"program": %s, "inputs": {"q": %s}}', json.dumps(_program()), literal)
        _refused(_raw(client, "/v1/runs", run), 422, "finite number")
        # the case: a program's own `temperature: NaN` was 201, then an engine error
        node = json.dumps(_program(temperature=0.5)).replace("0.5", literal)
        _refused(_raw(client, "/v1/runs", fill('{"program": %s}', node)), 422, "finite number")
    huge = client.post("/v1/runs", json={"program": _program(temperature=1e308)})
    _refused(huge, 422, "temperature")
    # finite but absurd: a retry backoff of 1e308 s used to sleep for an hour
    response = client.post("/v1/programs", json={"program": _program(retries=1, backoff_s=1e308)})
    _refused(response, 422, "backoff_s")


def test_integer_fields_have_ranges(client: httpx.Client) -> None:
    # seeds: 64-bit unsigned (2^64 used to hang the run; the proxy answered 504 after 300 s)
    _refused(client.post("/v1/programs", json={"program": _program(seed=2**64)}), 422, "seed")
    assert client.post("/v1/programs", json={"program": _program(seed=2**64 - 1)}).status_code == 201
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    _refused(client.post("/v1/chat/completions", json={**chat, "seed": 2**64}), 400, "seed")
    _refused(client.post("/v1/chat/completions", json={**chat, "max_tokens": 2**31}), 400, "max_tokens")
    _refused(client.post("/v1/chat/completions", json={**chat, "n": 10**6}), 400, "n")
    # cursors and event ids: the store's signed 64-bit range (2^63 used to overflow SQLite: 500)
    _refused(client.get("/v1/runs", params={"cursor": str(2**63)}), 422, "cursor")
    assert client.get("/v1/runs", params={"cursor": str(2**63 - 1)}).status_code == 200
    run = client.post("/v1/runs", json={"program": _program(), "inputs": {"q": "hi"}})
    assert run.status_code == 201, run.text
    events = f"/v1/runs/{run.json()['id']}/events"
    _refused(client.get(events, headers={"Last-Event-ID": str(2**63)}), 422, "Last-Event-ID")
    _refused(client.get(events, params={"last_event_id": 2**63}), 422, "last_event_id")


def test_proxy_fields_have_ranges_and_strict_types(client: httpx.Client) -> None:
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    cases = {
        "temperature": 1e308,
        "top_p": 1.5,
        "stop": ["x"] * 10_000,
        "stream": "yes",
        "max_tokens": "5",
        "logit_bias": {"1": 1e9},
        "presence_penalty": -3,
    }
    for field, value in cases.items():
        _refused(client.post("/v1/chat/completions", json={**chat, field: value}), 400, field)
    _refused(client.post("/v1/chat/completions", json={**chat, "stop": ["x" * 5000]}), 400, "stop")
    _refused(client.post("/v1/chat/completions", json={**chat, "expected_tool_latency_s": 1e9}), 400)
    ok = client.post("/v1/chat/completions", json={**chat, "temperature": 2, "stop": ["a"] * 64, "seed": 7})
    assert ok.status_code == 200, ok.text


def test_a_run_planning_millions_of_llm_calls_is_refused(client: httpx.Client) -> None:
    program = _program(max_visits=1000, on_exhausted="__end__")
    program["state"].append({"name": "items", "default": []})
    fan = {"kind": "map", "name": "fan", "over": "items", "max_items": 4096,
           "body": {"kind": "llm", "name": "b", "prompt": {"slots": [{"var": "item"}]}}}  # fmt: skip
    program["nodes"].append(fan)
    program["edges"] = [{"source": "a", "target": "fan"}, {"source": "fan", "target": "a"}]
    _refused(client.post("/v1/runs", json={"program": program}), 422, "LLM calls", "limit is 100,000")
    limits = client.get("/v1/limits").json()
    assert limits["max_planned_calls"] == 100_000


def test_the_engine_server_refuses_the_same_inputs(tmp_path: Path) -> None:
    engine = _engine()
    with serve_in_thread(create_engine_app(engine)) as url, httpx.Client(base_url=url, timeout=20) as c:
        _refused(_raw(c, "/v1/chat/completions", fill(CHAT, LONE)), 400, "lone surrogate")
        _refused(_raw(c, "/generate", fill('{"text": %s}', LONE)), 400, "lone surrogate")
        body = '{"text": "hi", "sampling_params": {"temperature": NaN}}'
        _refused(_raw(c, "/generate", body), 400, "finite number")
        tokens = {"token_ids": [1, 2], "sampling_params": {"seed": 2**64}}
        _refused(c.post("/inference/v1/generate", json=tokens), 400, "seed")
        _refused(
            c.post("/generate", json={"text": "hi", "sampling_params": {"stop": ["x"] * 100}}), 400, "stop"
        )
        ok = c.post(
            "/generate", json={"text": "hi", "sampling_params": {"max_new_tokens": 2, "seed": 2**64 - 1}}
        )
        assert ok.status_code == 200, ok.text


def _api_routes(routes: list[Any]) -> Iterator[Any]:
    """Every route of an app, through included routers (FastAPI keeps those as they were)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _api_routes(inner.routes)
        else:
            yield route


def test_every_route_of_both_apps_parses_strict_json(served: Served) -> None:
    from fastapi.routing import APIRoute

    from legato.engine_adapter.server.strict_json import StrictJSONRoute
    from legato.server.app import create_app

    for app in (create_app(served.state), create_engine_app(_engine())):
        # every route that may take a body (the offline docs pages are GET only)
        routes = [r for r in _api_routes(app.routes) if isinstance(r, APIRoute) and r.methods != {"GET"}]
        assert len(routes) >= 6 and all(isinstance(r, StrictJSONRoute) for r in routes), [
            r.path for r in routes if not isinstance(r, StrictJSONRoute)
        ]


def test_a_repeated_query_parameter_is_refused_not_last_wins(client: httpx.Client) -> None:
    _refused(client.get("/v1/programs", params=[("limit", "{x}"), ("limit", "5")]), 422, "limit")
    assert client.get("/v1/programs", params={"limit": "5"}).status_code == 200


def test_the_rollout_api_takes_the_same_ranges_and_strict_types(client: httpx.Client) -> None:
    """Found by the schemathesis run: `/v1/rollouts` took `true` as a token id and any seed."""
    ok = {"prompt_ids": [1, 2, 3], "sampling_params": {"max_tokens": 2}}
    bad = {
        "prompt_ids": {"prompt_ids": [True, False]},
        "seed": {**ok, "sampling_params": {"max_tokens": 2, "seed": 2**64}},
        "temperature": {**ok, "sampling_params": {"temperature": 1e308}},
        "max_tokens": {**ok, "sampling_params": {"max_tokens": "5"}},
    }
    for field, body in bad.items():
        response = client.post("/v1/rollouts", json=body)
        assert 400 <= response.status_code < 500 and field in response.text, (field, response.text)
    nan = '{"prompt_ids": [1], "sampling_params": {"temperature": NaN}}'
    assert _raw(client, "/v1/rollouts", nan).status_code in (400, 422)
    assert client.post("/v1/rollouts", json=ok).status_code in (200, 201)
