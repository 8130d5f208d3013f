"""The control plane answers only admins. Keys are made as an operator makes them, with the real
`legato tenants add` command (`--admin` for the trainer), against the store a live app serves
from; calls go over real HTTP. A plain tenant key gets 403 on every state-changing control
call (and on SGLang's abort-all) while its own rollouts and the read-only calls work; the admin
tenant and the operator's `LEGATO_ADMIN_KEY` operate the server."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from legato.server.app import create_app
from legato.server.config import ServerConfig
from legato.server.state import ServerState, build_state
from legato.tools.registry import ToolRegistry
from tests.rl.helpers import shifted_weights, upload
from tests.server.serving import serve_in_thread, tiny_engine

OPERATOR_KEY = "operator-secret-for-tests"
# (path, request arguments) of every state-changing control call
CONTROL_CALLS: list[tuple[str, dict[str, object]]] = [
    ("/pause", {"params": {"mode": "keep"}}),
    ("/resume", {}),
    ("/sleep", {}),
    ("/wake_up", {}),
    ("/reset_prefix_cache", {}),
    ("/flush_cache", {}),
    ("/init_weight_transfer_engine", {"json": {}}),
    ("/update_weights", {"json": {"update_info": {"model_path": "/nonexistent"}}}),
    ("/pause_generation", {"json": {"mode": "abort"}}),
    ("/continue_generation", {}),
    ("/update_weights_from_disk", {"json": {"model_path": "/nonexistent"}}),
    ("/abort_request", {"json": {"abort_all": True}}),
]


def _tenants_add(db: Path, *args: str) -> str:
    """`legato tenants add ARGS --db DB`; returns the key it prints."""
    cmd = [sys.executable, "-m", "legato.cli", "tenants", "add", *args, "--db", str(db)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)
    return done.stdout.strip()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], ServerState]]:
    db = tmp_path / "admin.db"
    keys = {"trainer": _tenants_add(db, "trainer", "--admin"), "worker": _tenants_add(db, "worker")}
    listed = subprocess.run(
        [sys.executable, "-m", "legato.cli", "tenants", "list", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    admins = {t["name"]: t["admin"] for t in map(json.loads, listed.stdout.splitlines())}
    assert admins == {"trainer": True, "worker": False}
    config = replace(ServerConfig(db_path=db, admin_key=OPERATOR_KEY), policy="legato")
    state = build_state(config, tiny_engine(), ToolRegistry())
    with serve_in_thread(create_app(state)) as url:
        yield url, keys, state


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_a_tenant_without_admin_gets_403_on_the_control_plane(
    served: tuple[str, dict[str, str], ServerState],
) -> None:
    url, keys, _ = served
    with httpx.Client(base_url=url, timeout=60, headers=_auth(keys["worker"])) as c:
        for path, kwargs in CONTROL_CALLS:
            r = c.post(path, **kwargs)  # type: ignore[arg-type]
            assert r.status_code == 403, (path, r.status_code, r.text)
            assert "legato tenants add NAME --admin" in r.json()["error"]["message"]
        assert upload(c, {}).status_code == 403  # msgpack weights too
        # its own work and the read-only calls are not control
        assert c.get("/get_weight_version").status_code == 200
        assert c.get("/get_world_size").status_code == 200
        body = {"prompt_ids": [65, 66, 67], "sampling_params": {"max_tokens": 2}}
        r = c.post("/v1/rollouts", json=body)
        assert r.status_code == 200, r.text
        rid = r.json()["turns"][0]["rollout_id"]
        assert c.post("/abort_request", json={"rid": rid}).status_code == 200  # its own request
    with httpx.Client(base_url=url, timeout=60) as c:  # no key, with tenants configured: 401
        assert c.post("/pause", params={"mode": "keep"}).status_code == 401


@pytest.mark.parametrize("who", ["trainer", "operator"])
def test_admins_operate_the_control_plane(served: tuple[str, dict[str, str], ServerState], who: str) -> None:
    url, keys, state = served
    key = OPERATOR_KEY if who == "operator" else keys["trainer"]
    with httpx.Client(base_url=url, timeout=60, headers=_auth(key)) as c:
        r = c.post("/pause", params={"mode": "keep"})
        assert r.status_code == 200, r.text
        assert r.json()["replicas"][0]["paused"] == "keep"
        assert c.post("/resume").status_code == 200
        assert c.post("/reset_prefix_cache").status_code == 200
        missing = c.post("/update_weights_from_disk", json={"model_path": "/nonexistent"})
        assert missing.status_code == 400  # allowed, and refused for its own reason
        r = upload(c, shifted_weights(state), version=f"by-{who}")
        assert r.status_code == 200, r.text
        assert c.get("/get_weight_version").json()["weight_version"] == f"by-{who}"
