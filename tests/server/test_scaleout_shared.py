"""Two real `legato serve` instances on one real Redis: state a client may reach through either.

- A run driven by instance A waits on a client tool: B lists the pending call, accepts its
  result (A's run then finishes), and both refuse a second result for the same call (409).
- A tenant's tokens per minute count every instance: after a run used its budget on A, B
  answers 429 (within the ~1 s the instances take to exchange their counts).
- A result posted while no instance waits on the call (its driver was killed, the run not yet
  taken over) is kept; the instance that takes the run over finishes it with that result.
- Fair-share counters count every instance: while two tenants are both backlogged on Y, the
  one served on X meanwhile goes after the other on Y (per-instance counters would pick it).
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import anyio
import httpx

from legato.server.auth import hash_key, new_api_key
from legato.server.store import RedisRunStore, TenantRecord
from tests.server.programs import qa_program
from tests.server.serving import TOOLS_FILE, ServeProcess
from tests.server.test_drain import BASE_ARGS, tool_program
from tests.server.test_durability import finished, poll, run_of

LEASE_S = 3.0


def _store_args(redis_url: str) -> list[str]:
    return ["--redis-url", redis_url, "--redis-prefix", f"t{uuid.uuid4().hex[:8]}:"]


def _add_tenant(store: list[str], name: str, *extra: str) -> str:
    add = [sys.executable, "-m", "legato.cli", "tenants", "add", name, *extra, *store]
    return subprocess.run(add, capture_output=True, text=True, check=True, timeout=60).stdout.strip()


async def _add_tenants_with_ids(redis_url: str, prefix: str, weights: dict[str, float]) -> dict[str, str]:
    """Tenants named and identified by the keys of `weights` (ids fix how ties are broken)."""
    store = RedisRunStore(redis_url, prefix=prefix)
    await store.open()
    try:
        keys = {}
        for name, weight in weights.items():
            keys[name] = key = new_api_key()
            await store.add_tenant(TenantRecord(id=name, name=name, key_hash=hash_key(key), weight=weight))
        return keys
    finally:
        await store.close()


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
    key = _add_tenant(store, "tpm", "--tokens-per-minute", "10")
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


ADMIN_KEY = "lg_admin_fair_share_test"
PROMPT = "x" * 300  # byte tokens: one program alone fits Y's 512-token pool, two do not


def _one_call(max_tokens: int = 8) -> dict[str, Any]:
    return {
        "name": "one_call",
        "state": [{"name": "question"}, {"name": "answer"}],
        "nodes": [
            {
                "kind": "llm",
                "name": "answer",
                "prompt": {"slots": [{"var": "question"}], "suffix": "A:"},
                "output": "answer",
                "max_tokens": max_tokens,
            }
        ],
        "entry": "answer",
    }


def test_a_tenant_served_on_one_instance_goes_after_the_other_on_the_second(
    tmp_path: Path, redis_url: str
) -> None:
    """Y (a simulated GPU slowed 5000x, KV for one program at a time) runs heavy's blocker while
    light's program and heavy's second wait; both tenants are then active on Y at equal
    counters (light was lifted to heavy's on arrival, as VTC does). Heavy is then served on X.
    When the blocker is cancelled, Y admits light's program: heavy's service on X counts on Y.
    With per-instance counters the two would tie on Y, and a tie goes to the smaller tenant id,
    heavy's (ids chosen so), so Y would admit heavy's program."""
    store = _store_args(redis_url)
    weights = {"t_0heavy": 2.0, "t_1light": 1.0}
    keys = anyio.run(_add_tenants_with_ids, redis_url, store[-1], weights)
    keys["heavy"], keys["light"] = keys.pop("t_0heavy"), keys.pop("t_1light")
    common = ["--tools", str(TOOLS_FILE), "--log-level", "warning", "--policy", "legato", *store]
    env = {"LEGATO_ADMIN_KEY": ADMIN_KEY}
    x = ServeProcess([*common, "--engine", "sim-realtime:time_scale=0"], tmp_path / "x.log", env)
    slow = "sim-realtime:time_scale=5000,num_blocks=32,block_size=16"
    y = ServeProcess([*common, "--engine", slow], tmp_path / "y.log", env)
    body = {"program": _one_call(), "inputs": {"question": PROMPT}}

    def client(url: str, name: str) -> httpx.Client:
        return httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {keys[name]}"})

    try:
        url_x, url_y = x.start(), y.start()
        with (
            client(url_y, "heavy") as heavy_y,
            client(url_y, "light") as light_y,
            client(url_x, "heavy") as heavy_x,
            httpx.Client(base_url=url_y, timeout=30, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as ops,
        ):

            def states() -> dict[str, str]:
                return {r["id"]: r["state"] for r in ops.get("/ui/api/programs").json()["rows"]}

            def admitted() -> set[str]:
                entries = ops.get("/ui/api/decisions", params={"limit": 200}).json()["entries"]
                return {e["run_id"] for e in entries if e["kind"] == "admit"}

            def counters() -> dict[str, float]:
                rows = ops.get("/ui/api/tenants").json()["rows"]
                return {r["name"][3:]: r["fair_counter"] for r in rows if r["name"].startswith("t_")}

            blocker = heavy_y.post("/v1/runs", json=body).json()["id"]
            poll(lambda: blocker in admitted(), "Y to admit the blocker", 30)
            light = light_y.post("/v1/runs", json=body).json()["id"]
            heavy = heavy_y.post("/v1/runs", json=body).json()["id"]
            poll(lambda: states().get(light) == states().get(heavy) == "queued", "both to queue on Y", 30)
            assert counters()["heavy"] == counters()["light"]  # light was lifted to heavy's counter

            served = heavy_x.post("/v1/runs", json=body).json()["id"]
            poll(lambda: finished(heavy_x, [served]), "heavy's run on X", 30)
            poll(lambda: counters()["heavy"] > counters()["light"], "Y to count heavy's service on X", 30)

            assert heavy_y.post(f"/v1/runs/{blocker}/cancel").status_code == 200
            poll(lambda: bool(admitted() & {light, heavy}), "Y to admit a queued program", 30)
            assert admitted() & {light, heavy} == {light}, counters()
    finally:
        x.stop()
        y.kill9()
