"""The `/ui` data endpoints on a live server (real socket, tiny torch engine, two tenants, the
`legato` policy): tenant A's key never shows tenant B's program or run ids on any of them, the
admin key and keyless localhost see everything, the page itself is static and needs no key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import load_test_registry
from tests.server.programs import gated_program
from tests.server.proxy_harness import Served, legato_server, metric, scrape
from tests.server.serving import tiny_engine

ADMIN = "lg_admin-test-key"
ENDPOINTS = ("snapshot", "programs", "tenants", "decisions", "replicas")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with legato_server(
        tmp_path, tiny_engine(), policy="legato", registry=load_test_registry(), admin_key=ADMIN
    ) as s:
        yield s


def _chat(served: Served, tenant: str, program_id: str) -> None:
    body = {
        "model": "legato-default",
        "messages": [{"role": "user", "content": f"hello from {program_id}"}],
        "max_tokens": 4,
        "program_id": program_id,
        "next_tool": "pytest",
    }
    r = httpx.post(f"{served.url}/v1/chat/completions", json=body, headers=served.headers(tenant), timeout=60)
    assert r.status_code == 200, r.text


def _start_run(served: Served, tenant: str, tmp: Path) -> str:
    inputs = {
        "topic": f"{tenant} topic",
        "record_file": str(tmp / f"{tenant}.log"),
        "gate_file": str(tmp / f"{tenant}.gate"),  # never created: the run waits in its tool
    }
    r = httpx.post(
        f"{served.url}/v1/runs",
        json={"program": gated_program(), "inputs": inputs},
        headers=served.headers(tenant),
        timeout=60,
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _get(served: Served, path: str, key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"{served.url}{path}", headers=headers, timeout=30)


def test_a_tenant_key_never_shows_another_tenants_programs(served: Served, tmp_path: Path) -> None:
    _chat(served, "acme", "acme-agent-7")
    _chat(served, "globex", "globex-agent-9")
    acme_run = _start_run(served, "acme", tmp_path)
    globex_run = _start_run(served, "globex", tmp_path)
    tracker = served.state.extras["proxy"].tracker
    globex_ids = {globex_run, "globex-agent-9", served.tenant_ids["globex"], "globex"}
    globex_ids |= {p.run_id for p in tracker.programs.values() if p.tenant == served.tenant_ids["globex"]}
    acme_key = served.keys["acme"]
    snapshot = _get(served, "/ui/api/snapshot", acme_key).json()
    shown = {row["id"] for row in snapshot["programs"]["rows"]}
    assert acme_run in shown and len(shown) == 2  # its run and its proxy program
    for name in ENDPOINTS:
        text = _get(served, f"/ui/api/{name}", acme_key).text
        leaked = [i for i in globex_ids if i in text]
        assert not leaked, (name, leaked)
    assert _get(served, f"/ui/api/runs/{globex_run}", acme_key).status_code == 404
    page = _get(served, f"/ui/api/runs/{acme_run}", acme_key).json()
    assert {n["name"] for n in page["graph"]["nodes"]} == {"draft", "record", "wait", "final"}
    admin = _get(served, "/ui/api/snapshot", ADMIN).json()
    assert {acme_run, globex_run} <= {row["id"] for row in admin["programs"]["rows"]}
    assert {"acme", "globex"} <= {row["name"] for row in admin["tenants"]["rows"]}
    assert admin["viewer"]["admin"] and admin["decisions"]["available"]
    assert _get(served, f"/ui/api/runs/{globex_run}", ADMIN).status_code == 200


def test_the_page_is_static_and_the_data_needs_a_key(served: Served) -> None:
    page = _get(served, "/ui", None)
    assert page.status_code == 200 and "/ui/static/app.js" in page.text
    for asset in ("app.js", "style.css"):
        assert _get(served, f"/ui/static/{asset}", None).status_code == 200
    assert _get(served, "/ui/static/../app.py", None).status_code == 404
    for name in ENDPOINTS:
        r = _get(served, f"/ui/api/{name}", None)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert _get(served, "/ui/api/snapshot", "lg_wrong").status_code == 401
    assert _get(served, "/ui/api/programs?limit=0", ADMIN).status_code == 422


def test_keyless_localhost_sees_every_program(tmp_path: Path) -> None:
    with legato_server(tmp_path, tiny_engine(), policy="passthrough", tenants=()) as served:
        _chat_keyless(served.url)
        snap = httpx.get(f"{served.url}/ui/api/snapshot", timeout=30).json()
        assert snap["viewer"]["admin"] and snap["policy"] == "passthrough"
        assert [row["name"] for row in snap["programs"]["rows"]] == ["solo"]
        assert snap["tenants"]["rows"][0]["name"] == "default"
        assert snap["tenants"]["rows"][0]["tokens_window"] > 0
        assert not snap["decisions"]["available"]  # passthrough: no policy decides
        replica = httpx.get(f"{served.url}/ui/api/replicas", timeout=30).json()[0]  # a 2nd sample
        assert replica["tiers"][0]["tier"] == "device" and replica["busy_fraction"] is not None


def _chat_keyless(url: str) -> None:
    body = {
        "model": "legato-default",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "program_id": "solo",
        "next_tool": "pytest",
    }
    assert httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).status_code == 200


def test_429s_are_counted_per_tenant(served: Served) -> None:
    served.state.extras["proxy"].tracker.max_programs_per_tenant = 1  # a limit a tenant can hit
    _chat(served, "acme", "first")
    body = {"model": "legato-default", "messages": [{"role": "user", "content": "x"}], "program_id": "2nd"}
    r = httpx.post(f"{served.url}/v1/chat/completions", json=body, headers=served.headers("acme"), timeout=60)
    assert r.status_code == 429
    rows = {row["name"]: row for row in _get(served, "/ui/api/tenants", ADMIN).json()["rows"]}
    assert rows["acme"]["rejected_429"] == 1 and rows["globex"]["rejected_429"] == 0
    text = scrape(served.url)
    assert metric(text, "legato_tenant_rejections_total", tenant=served.tenant_ids["acme"]) == 1
