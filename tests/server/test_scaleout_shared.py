"""Two real `legato serve` instances on one real Redis: state a client may reach through either.

- A run driven by instance A waits on a client tool: B lists the pending call, accepts its
  result (A's run then finishes), and both refuse a second result for the same call (409).
- A tenant's tokens per minute count every instance: after a run used its budget on A, B
  answers 429 (within the ~1 s the instances take to exchange their counts).
- A result posted while no instance waits on the call (its driver was killed, the run not yet
  taken over) is kept; the instance that takes the run over finishes it with that result.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import httpx

from tests.server.programs import qa_program
from tests.server.serving import ServeProcess
from tests.server.test_drain import BASE_ARGS, tool_program
from tests.server.test_durability import finished, poll, run_of

LEASE_S = 3.0


def _store_args(redis_url: str) -> list[str]:
    return ["--redis-url", redis_url, "--redis-prefix", f"t{uuid.uuid4().hex[:8]}:"]


def _pair(tmp_path: Path, store: list[str]) -> tuple[ServeProcess, ServeProcess]:
    args = [*BASE_ARGS, *store, "--lease-s", str(LEASE_S)]
    return ServeProcess(args, tmp_path / "a.log"), ServeProcess(args, tmp_path / "b.log")


def _waiting_call(c: httpx.Client, run_id: str) -> str:
    poll(lambda: bool(run_of(c, run_id)["pending_tool_calls"]), "the client tool to wait", 60)
    return str(run_of(c, run_id)["pending_tool_calls"][0]["call_id"])


def test_a_client_tool_result_is_accepted_by_either_instance(tmp_path: Path, redis_url: str) -> None:
    a, b = _pair(tmp_path, _store_args(redis_url))
    ask = tool_program("ask", "ask_client", {"question": {"value": "ok?"}}, then_record=False)
    try:
        with (
            httpx.Client(base_url=a.start(), timeout=30) as ca,
            httpx.Client(base_url=b.start(), timeout=30) as cb,
        ):
            run_id = ca.post("/v1/runs", json={"program": ask}).json()["id"]
            call_id = _waiting_call(cb, run_id)  # B sees the call A's run waits on
            wrong = cb.post(f"/v1/runs/{run_id}/tool_results", json={"call_id": "nope", "output": 1})
            assert wrong.status_code == 404 and call_id in wrong.json()["error"]["message"]
            r = cb.post(f"/v1/runs/{run_id}/tool_results", json={"call_id": call_id, "output": "yes"})
            assert r.status_code == 200, r.text
            poll(lambda: finished(ca, [run_id]), "A's run to finish with B's result", 30)
            run = run_of(ca, run_id)
            assert run["status"] == "succeeded" and run["state"]["out"] == "yes", run
            for c in (ca, cb):
                again = c.post(f"/v1/runs/{run_id}/tool_results", json={"call_id": call_id, "output": "no"})
                assert again.status_code == 409, again.text
    finally:
        a.stop()
        b.stop()


def test_a_result_posted_between_owners_finishes_the_run_on_takeover(tmp_path: Path, redis_url: str) -> None:
    a, b = _pair(tmp_path, _store_args(redis_url))
    ask = tool_program("ask", "ask_client", {"question": {"value": "ok?"}}, then_record=False)
    try:
        with httpx.Client(base_url=a.start(), timeout=30) as ca:
            run_id = ca.post("/v1/runs", json={"program": ask}).json()["id"]
            call_id = _waiting_call(ca, run_id)
        a.kill9()  # nobody waits on the call until B takes the run over (after LEASE_S)
        with httpx.Client(base_url=b.start(), timeout=30) as cb:
            r = cb.post(f"/v1/runs/{run_id}/tool_results", json={"call_id": call_id, "output": "late"})
            assert r.status_code == 200, r.text
            poll(lambda: finished(cb, [run_id]), "B to take the run over and finish it", 60)
            run = run_of(cb, run_id)
            assert run["status"] == "succeeded" and run["state"]["out"] == "late", run
            assert run["resumed"] == 1
    finally:
        a.stop()
        b.stop()


def test_tokens_per_minute_count_every_instance(tmp_path: Path, redis_url: str) -> None:
    store = _store_args(redis_url)
    add = [sys.executable, "-m", "legato.cli", "tenants", "add", "tpm", "--tokens-per-minute", "10", *store]
    key = subprocess.run(add, capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    a, b = _pair(tmp_path, store)
    body = {"program": qa_program(4), "inputs": {"question": "q"}}
    auth = {"Authorization": f"Bearer {key}"}
    try:
        with (
            httpx.Client(base_url=a.start(), timeout=30, headers=auth) as ca,
            httpx.Client(base_url=b.start(), timeout=30, headers=auth) as cb,
        ):
            run_id = ca.post("/v1/runs", json=body).json()["id"]
            poll(lambda: finished(ca, [run_id]), "the run on A to use the budget", 60)
            poll(lambda: cb.post("/v1/runs", json=body).status_code == 429, "B to count A's tokens", 30)
            refused = cb.post("/v1/runs", json=body)
            assert refused.status_code == 429 and "tokens per minute" in refused.json()["error"]["message"]
            assert 1 <= int(refused.headers["retry-after"]) <= 60
    finally:
        a.stop()
        b.stop()
