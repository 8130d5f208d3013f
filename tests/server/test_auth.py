"""Tenants over real HTTP: 401 without / with a wrong key, other tenants' runs are 404,
quotas answer 429 with Retry-After; keys are stored hashed; the `legato tenants` CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import pytest

from legato.server.auth import QuotaTracker, Tenant, TenantRegistry, hash_key
from legato.server.errors import ApiError
from legato.server.state import ServerState
from legato.server.store import SqliteRunStore
from tests.server.conftest import MakeServerFactory
from tests.server.programs import gated_program, qa_program
from tests.server.serving import ROOT


def add_tenant(state: ServerState, name: str, **kw: int | None) -> tuple[Tenant, str]:
    async def add() -> tuple[Tenant, str]:
        return await state.tenants.add(name, **kw)  # type: ignore[arg-type]

    return anyio.run(add)


def test_keys_required_once_tenants_exist(server: tuple[str, ServerState]) -> None:
    url, state = server
    with httpx.Client(base_url=url, timeout=30) as c:
        assert c.get("/v1/runs").status_code == 200  # single-tenant default: keyless on localhost
        # ... whatever key a client sends (the official client always sends one, e.g. "EMPTY")
        for header in ("Bearer EMPTY", "Bearer lg_wrong", "Basic abc"):
            assert c.get("/v1/runs", headers={"Authorization": header}).status_code == 200, header
    acme, acme_key = add_tenant(state, "acme")
    other, other_key = add_tenant(state, "other")
    with httpx.Client(base_url=url, timeout=30) as c:
        missing = c.get("/v1/runs")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert "Authorization: Bearer" in missing.json()["error"]["message"]
        wrong = c.get("/v1/runs", headers={"Authorization": "Bearer lg_wrong"})
        assert wrong.status_code == 401 and "invalid API key" in wrong.json()["error"]["message"]
        assert c.get("/v1/runs", headers={"Authorization": "Basic abc"}).status_code == 401

        mine = {"Authorization": f"Bearer {acme_key}"}
        theirs = {"Authorization": f"Bearer {other_key}"}
        program_id = c.post("/v1/programs", json={"program": qa_program(4)}, headers=mine).json()["id"]
        run = c.post("/v1/runs", json={"program_id": program_id, "inputs": {"question": "hi"}}, headers=mine)
        assert run.status_code == 201, run.text
        run_id = run.json()["id"]
        assert c.get(f"/v1/runs/{run_id}", headers=mine).status_code == 200
        for method, path in [
            ("GET", f"/v1/runs/{run_id}"),
            ("GET", f"/v1/runs/{run_id}/events"),
            ("POST", f"/v1/runs/{run_id}/cancel"),
            ("GET", f"/v1/programs/{program_id}"),
        ]:
            assert c.request(method, path, headers=theirs).status_code == 404, path
        stolen = c.post("/v1/runs", json={"program_id": program_id, "inputs": {}}, headers=theirs)
        assert stolen.status_code == 404
        assert c.get("/v1/runs", headers=theirs).json()["data"] == []
    # only the hash is stored
    tenants = anyio.run(state.store.list_tenants)
    assert {t.key_hash for t in tenants} == {hash_key(acme_key), hash_key(other_key)}
    assert acme.cache_salt != other.cache_salt
    assert acme.cache_salt == state.inner_scheduler.cache_salt(acme.id)


def test_concurrent_run_quota_is_429_with_retry_after(
    server: tuple[str, ServerState], tmp_path: Path
) -> None:
    url, state = server
    _, key = add_tenant(state, "small", max_concurrent_runs=1)
    headers = {"Authorization": f"Bearer {key}"}
    gate = tmp_path / "gate"
    inputs = {"topic": "t", "record_file": str(tmp_path / "rec"), "gate_file": str(gate)}
    with httpx.Client(base_url=url, timeout=30, headers=headers) as c:
        first = c.post("/v1/runs", json={"program": gated_program(), "inputs": inputs})
        assert first.status_code == 201
        second = c.post("/v1/runs", json={"program": gated_program(), "inputs": inputs})
        assert second.status_code == 429
        assert int(second.headers["retry-after"]) >= 1
        assert "limit 1 concurrent runs" in second.json()["error"]["message"]
        gate.touch()
        with c.stream("GET", f"/v1/runs/{first.json()['id']}/events") as events:
            for _ in events.iter_lines():
                pass
        assert (
            c.post("/v1/runs", json={"program": qa_program(2), "inputs": {"question": "q"}}).status_code
            == 201
        )


def test_tokens_per_minute_quota(server: tuple[str, ServerState]) -> None:
    url, state = server
    _, key = add_tenant(state, "tpm", tokens_per_minute=10)
    with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {key}"}) as c:
        run_id = c.post("/v1/runs", json={"program": qa_program(4), "inputs": {"question": "q"}}).json()["id"]
        with c.stream("GET", f"/v1/runs/{run_id}/events") as events:
            for _ in events.iter_lines():
                pass
        refused = c.post("/v1/runs", json={"program": qa_program(4), "inputs": {"question": "q"}})
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert "tokens per minute" in refused.json()["error"]["message"]


def test_quota_window_slides() -> None:
    now = [0.0]
    quotas = QuotaTracker(clock=lambda: now[0])
    tenant = Tenant("t1", "t1", 1.0, 2, tokens_per_minute=100)
    quotas.record_tokens("t1", 60)
    now[0] = 30.0
    quotas.record_tokens("t1", 50)
    with pytest.raises(ApiError) as err:
        quotas.check_tokens(tenant)
    assert err.value.status == 429 and err.value.retry_after_s == pytest.approx(30.0)
    now[0] = 61.0
    quotas.check_tokens(tenant)  # the first 60 tokens left the window


def test_keyless_default_is_loopback_only(tmp_path: Path) -> None:
    async def check() -> None:
        store = SqliteRunStore(tmp_path / "a.db")
        await store.open()
        registry = TenantRegistry(store, "on", 8)
        assert (await registry.authenticate(None, "127.0.0.1")).id == "default"
        assert (await registry.authenticate(None, "::1")).id == "default"
        assert (await registry.authenticate("Bearer EMPTY", "127.0.0.1")).id == "default"
        for key in (None, "Bearer EMPTY"):
            with pytest.raises(ApiError) as err:
                await registry.authenticate(key, "10.1.2.3")
            assert err.value.status == 401
        off = TenantRegistry(store, "off", 8)
        with pytest.raises(ApiError):
            await off.authenticate(None, "127.0.0.1")
        await store.close()

    anyio.run(check)


def test_tenants_cli(tmp_path: Path) -> None:
    db = str(tmp_path / "t.db")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "legato.cli", "tenants", *args, "--db", db],
            capture_output=True, text=True, cwd=ROOT, timeout=60,
        )  # fmt: skip

    added = cli("add", "acme", "--weight", "2", "--max-concurrent-runs", "3")
    assert added.returncode == 0, added.stderr
    key = added.stdout.strip()
    assert key.startswith("lg_") and len(key) > 40
    listed = cli("list")
    assert '"name": "acme"' in listed.stdout and '"weight": 2.0' in listed.stdout
    assert key not in listed.stdout and hash_key(key) not in listed.stdout
    assert cli("add", "acme").returncode == 1
    assert cli("remove", "acme").returncode == 0
    assert cli("remove", "acme").returncode == 1
    assert cli("list").stdout.strip() == ""


def test_tenant_weight_reaches_the_fair_share_policy(make_server: MakeServerFactory) -> None:
    with make_server(policy="legato") as (url, state):
        tenant, key = add_tenant(state, "heavy", weight=3)  # type: ignore[arg-type]
        with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {key}"}) as c:
            run_id = c.post("/v1/runs", json={"program": qa_program(2), "inputs": {"question": "q"}}).json()[
                "id"
            ]
            with c.stream("GET", f"/v1/runs/{run_id}/events") as events:
                for _ in events.iter_lines():
                    pass
            assert c.get(f"/v1/runs/{run_id}").json()["status"] == "succeeded"
        assert state.inner_scheduler.policy.fair.weights[tenant.id] == 3
