"""The workflow API over real HTTP: programs, runs, SSE events (resumable), cancel, list with
filters and pagination, client-side tool results."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from legato.server.state import ServerState
from legato.tools.client import ClientTool
from tests.server.conftest import MakeServerFactory
from tests.server.programs import gated_program, qa_program


def sse_events(client: httpx.Client, run_id: str, last_id: int | None = None) -> list[dict[str, Any]]:
    headers = {"Last-Event-ID": str(last_id)} if last_id is not None else {}
    events: list[dict[str, Any]] = []
    with client.stream("GET", f"/v1/runs/{run_id}/events", headers=headers, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        current: dict[str, Any] = {}
        for line in response.iter_lines():
            if line.startswith("id: "):
                current["id"] = int(line[4:])
            elif line.startswith("event: "):
                current["event"] = line[7:]
            elif line.startswith("data: "):
                current["data"] = json.loads(line[6:])
            elif line == "" and current:
                events.append(current)
                current = {}
    return events


def wait_finished(client: httpx.Client, run_id: str) -> dict[str, Any]:
    events = sse_events(client, run_id)
    assert events[-1]["event"] == "run_finished"
    body: dict[str, Any] = client.get(f"/v1/runs/{run_id}").json()
    return body


def test_register_run_follow_and_read(client: httpx.Client) -> None:
    created = client.post("/v1/programs", json={"program": qa_program()})
    assert created.status_code == 201, created.text
    program_id = created.json()["id"]
    assert client.get(f"/v1/programs/{program_id}").json()["program"]["name"] == "qa"

    started = client.post(
        "/v1/runs", json={"program_id": program_id, "inputs": {"question": "why?"}, "metadata": {"job": "a"}}
    )
    assert started.status_code == 201, started.text
    run_id = started.json()["id"]
    events = sse_events(client, run_id)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    assert "node_finished" in kinds and "tool_output" in kinds
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)

    run = client.get(f"/v1/runs/{run_id}").json()
    assert run["status"] == "succeeded"
    assert run["metadata"] == {"job": "a"}
    answer = run["output"]["answer"]
    assert isinstance(answer, str) and run["output"]["words"] == len(answer.split())
    assert [s["node"] for s in run["steps"]] == ["answer", "count"]
    assert run["state"] == run["output"]

    # resume the stream after an event: exactly the later (stored) events come back
    middle = next(e for e in events if e["event"] == "node_finished")
    again = sse_events(client, run_id, last_id=middle["id"])
    assert again and all(e["id"] > middle["id"] for e in again)
    assert [e["id"] for e in again] == [
        e["id"] for e in events if e["id"] > middle["id"] and e["event"] != "token"
    ]


def test_inline_program_and_listing(client: httpx.Client) -> None:
    ids = []
    for i in range(5):
        r = client.post("/v1/runs", json={"program": qa_program(4), "inputs": {"question": f"q{i}"}})
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    for run_id in ids:
        assert wait_finished(client, run_id)["status"] == "succeeded"
    page1 = client.get("/v1/runs", params={"limit": 2}).json()
    assert [r["id"] for r in page1["data"]] == ids[::-1][:2]
    seen = [r["id"] for r in page1["data"]]
    cursor = page1["next_cursor"]
    while cursor:
        page = client.get("/v1/runs", params={"limit": 2, "cursor": cursor}).json()
        seen += [r["id"] for r in page["data"]]
        cursor = page["next_cursor"]
    assert seen == ids[::-1]
    assert len(client.get("/v1/runs", params={"status": "succeeded"}).json()["data"]) == 5
    assert client.get("/v1/runs", params={"status": "failed"}).json()["data"] == []
    assert client.get("/v1/runs", params={"cursor": "abc"}).status_code == 422


def start_gated_run(client: httpx.Client, tmp_path: Path, gate: Path) -> str:
    """A `gated_program` run that waits in its `wait` tool until `gate` exists."""
    inputs = {"topic": "x", "record_file": str(tmp_path / "rec"), "gate_file": str(gate)}
    run_id: str = client.post("/v1/runs", json={"program": gated_program(), "inputs": inputs}).json()["id"]
    return run_id


def data_events(client: httpx.Client, run_id: str) -> Iterator[dict[str, Any]]:
    """The run's SSE events (their `data:` payloads) as they come."""
    with client.stream("GET", f"/v1/runs/{run_id}/events", timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                yield json.loads(line[6:])


def test_cancel_a_waiting_run(client: httpx.Client, tmp_path: Path) -> None:
    run_id = start_gated_run(client, tmp_path, tmp_path / "never")
    events: list[dict[str, Any]] = []
    for event in data_events(client, run_id):
        events.append(event)
        if event["kind"] == "tool_started" and event["node"] == "wait":
            break
    cancelled = client.post(f"/v1/runs/{run_id}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    run = client.get(f"/v1/runs/{run_id}").json()
    assert run["status"] == "cancelled"
    assert run["state"]["recorded"] is not None  # the finished steps stay in the journal
    assert client.post(f"/v1/runs/{run_id}/cancel").json()["status"] == "cancelled"  # idempotent


def test_client_side_tool_results(server: tuple[str, ServerState], client: httpx.Client) -> None:
    _, state = server
    state.registry.register(ClientTool("ask_user", timeout=60, description="ask the human"), replace=True)
    program = {
        "name": "asks",
        "state": [{"name": "q"}, {"name": "reply"}],
        "nodes": [
            {
                "kind": "tool",
                "name": "ask",
                "tool": "ask_user",
                "args": {"q": {"var": "q"}},
                "output": "reply",
            }
        ],
        "entry": "ask",
    }
    run_id = client.post("/v1/runs", json={"program": program, "inputs": {"q": "name?"}}).json()["id"]
    pending: list[dict[str, Any]] = []
    with client.stream("GET", f"/v1/runs/{run_id}/events", timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and '"waiting_for_tool"' in line:
                break
    pending = client.get(f"/v1/runs/{run_id}").json()["pending_tool_calls"]
    assert [p["name"] for p in pending] == ["ask_user"] and pending[0]["args"] == {"q": "name?"}
    call_id = pending[0]["call_id"]
    assert (
        client.post(f"/v1/runs/{run_id}/tool_results", json={"call_id": "nope", "output": 1}).status_code
        == 404
    )
    ok = client.post(f"/v1/runs/{run_id}/tool_results", json={"call_id": call_id, "output": "Ada"})
    assert ok.status_code == 200, ok.text
    again = client.post(f"/v1/runs/{run_id}/tool_results", json={"call_id": call_id, "output": "Bob"})
    assert again.status_code == 409
    run = wait_finished(client, run_id)
    assert run["status"] == "succeeded" and run["output"]["reply"] == "Ada"


def test_quiet_streams_get_keepalives(make_server: MakeServerFactory, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    inputs = {"topic": "x", "record_file": str(tmp_path / "rec"), "gate_file": str(gate)}
    with make_server(sse_keepalive_s=0.2) as (url, _), httpx.Client(base_url=url, timeout=30) as c:
        run_id = c.post("/v1/runs", json={"program": gated_program(), "inputs": inputs}).json()["id"]
        seen: list[str] = []
        with c.stream("GET", f"/v1/runs/{run_id}/events", params={"last_event_id": -1}) as response:
            for line in response.iter_lines():
                seen.append(line)
                if line == ": keepalive" and not gate.exists():
                    gate.touch()  # the run was quiet (waiting in the tool): now let it finish
        assert ": keepalive" in seen
        assert any(line == "event: run_finished" for line in seen)


def test_a_live_stream_has_every_event_once_in_order(client: httpx.Client, tmp_path: Path) -> None:
    """Followed while it runs, a stream has every event (tokens too) exactly once, in seq order:
    tokens sent straight from the run's task (while its recorder is idle) never overtake the
    node events recorded before them."""
    gate = tmp_path / "gate"
    run_id = start_gated_run(client, tmp_path, gate)
    events: list[dict[str, Any]] = []
    for event in data_events(client, run_id):
        events.append(event)
        if event["kind"] == "tool_started" and not gate.exists():
            gate.touch()  # the run waits in `gate`: the `final` node then streams live
    assert [e["seq"] for e in events] == list(range(len(events)))
    for node in ("draft", "final"):
        at = [i for i, e in enumerate(events) if e["node"] == node]
        kinds = [events[i]["kind"] for i in at]
        assert kinds[0] == "node_started" and kinds[-1] == "node_finished" and "token" in kinds
        assert at == list(range(at[0], at[-1] + 1)), kinds  # nothing else interleaved
    assert events[-1]["kind"] == "run_finished" and events[-1]["data"]["status"] == "succeeded"
