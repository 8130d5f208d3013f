"""Bad input over real HTTP: every refusal is a 4xx with a message saying what to fix."""

from __future__ import annotations

from typing import Any

import httpx

from legato.server.config import Limits
from tests.server.conftest import MakeServerFactory
from tests.server.programs import qa_program


def error(response: httpx.Response) -> str:
    body: dict[str, Any] = response.json()
    message: str = body["error"]["message"]
    assert body["error"]["code"] == response.status_code
    return message


def test_invalid_programs_are_422_with_the_validators_message(client: httpx.Client) -> None:
    unknown_tool = qa_program()
    unknown_tool["nodes"][1]["tool"] = "rm_rf"
    r = client.post("/v1/programs", json={"program": unknown_tool})
    assert r.status_code == 422 and "rm_rf" in error(r) and "unknown_tool" in error(r)

    fan_out = qa_program()
    fan_out["state"].append({"name": "items"})
    fan_out["nodes"].append(
        {"kind": "map", "name": "many", "over": "items", "max_items": 1_000_000,
         "body": {"kind": "tool", "name": "b", "tool": "word_count", "args": {"text": {"var": "item"}}}}
    )  # fmt: skip
    fan_out["edges"].append({"source": "count", "target": "many"})
    r = client.post("/v1/programs", json={"program": fan_out})
    assert r.status_code == 422 and "max_items: Input should be less than or equal to 4096" in error(r)

    loop = qa_program()
    loop["nodes"][0]["max_visits"] = 10**6
    r = client.post("/v1/runs", json={"program": loop, "inputs": {}})
    assert r.status_code == 422 and "max_visits" in error(r)

    typo = qa_program()
    typo["nodes"][0]["max_tokenz"] = 3
    r = client.post("/v1/programs", json={"program": typo})
    assert r.status_code == 422 and "max_tokenz" in error(r)

    r = client.post("/v1/runs", json={"inputs": {}})
    assert r.status_code == 422 and "exactly one of program_id" in error(r)
    r = client.post("/v1/runs", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in error(r)


def test_unknown_ids_and_inputs(client: httpx.Client) -> None:
    r = client.post("/v1/runs", json={"program_id": "prog_nope", "inputs": {}})
    assert r.status_code == 404 and "POST /v1/programs" in error(r)
    assert client.get("/v1/runs/run_nope").status_code == 404
    assert client.get("/v1/programs/prog_nope").status_code == 404
    r = client.post("/v1/runs", json={"program": qa_program(), "inputs": {"questoin": "x"}})
    assert r.status_code == 422 and "questoin" in error(r) and "question" in error(r)
    assert client.get("/v1/nothing").status_code == 404


def test_size_limits(make_server: MakeServerFactory) -> None:
    limits = Limits(max_body_bytes=20_000, max_prompt_chars=300)
    with make_server(limits=limits) as (url, state), httpx.Client(base_url=url, timeout=30) as c:
        huge = c.post("/v1/runs", json={"program": qa_program(), "inputs": {"question": "x" * 50_000}})
        assert huge.status_code == 413 and "max_body_bytes" in error(huge)
        chunked = c.post(
            "/v1/runs", content=iter([b'{"inputs": {"q": "', b"x" * 30_000, b'"}}']),
            headers={"content-type": "application/json"},
        )  # fmt: skip
        assert chunked.status_code == 413
        long_prompt = c.post("/v1/runs", json={"program": qa_program(), "inputs": {"question": "y" * 301}})
        assert long_prompt.status_code == 422
        assert "300 (max_prompt_chars)" in error(long_prompt)
        limit = c.get("/v1/limits").json()
        assert limit["max_prompt_chars"] == 300 and limit["max_model_len"] == state.runs.max_model_len
        assert limit["max_n"] == 128 and limit["max_top_logprobs"] == 20


def test_prompt_longer_than_the_model_is_422(make_server: MakeServerFactory) -> None:
    with make_server() as (url, state), httpx.Client(base_url=url, timeout=30) as c:
        assert state.runs.max_model_len is not None
        program = qa_program(max_tokens=64)
        r = c.post(
            "/v1/runs", json={"program": program, "inputs": {"question": "z" * state.runs.max_model_len}}
        )
        assert r.status_code == 422
        assert "max_model_len" in error(r) and "shorten" in error(r)


def test_health_and_openapi(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    run = "/v1/runs/{run_id}"
    for path in ("/v1/programs", "/v1/runs", run, f"{run}/events", f"{run}/cancel", f"{run}/tool_results"):
        assert path in paths, path
    assert "/healthz" in paths and "/readyz" in paths
    create = paths["/v1/runs"]["post"]["responses"]
    assert {"201", "401", "404", "413", "422", "429"} <= set(create)
