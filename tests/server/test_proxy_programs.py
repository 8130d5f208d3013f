"""The proxy's live programs over real HTTP with the official `openai` client: SkyRL's
`X-Session-ID` names the program, `GET /v1/proxy/programs` lists a tenant's own live programs,
`POST /v1/proxy/programs/{id}/release` ends one (the old path is a deprecated alias), every answer
names its replica; and keyless mode takes the client's `api_key="EMPTY"`."""

from __future__ import annotations

from pathlib import Path

import httpx
from openai import OpenAI

from tests.server.proxy_harness import legato_server
from tests.server.serving import tiny_engine


def _chat(client: OpenAI, session: str | None = None) -> str:
    headers = {"X-Session-ID": session} if session is not None else None
    raw = client.chat.completions.with_raw_response.create(
        model=client.models.list().data[0].id,
        messages=[{"role": "user", "content": "Run the tests."}],
        max_tokens=2,
        temperature=0,
        extra_headers=headers,
    )
    assert raw.parse().choices[0].message.content is not None
    return raw.headers["x-legato-replica"]


def test_session_header_live_programs_and_release(tmp_path: Path) -> None:
    with legato_server(tmp_path, tiny_engine(), policy="legato") as served:
        acme = OpenAI(base_url=f"{served.url}/v1", api_key=served.keys["acme"], max_retries=0, timeout=60)
        globex = OpenAI(base_url=f"{served.url}/v1", api_key=served.keys["globex"], max_retries=0, timeout=60)
        assert _chat(acme, "traj-1") == "0" and _chat(acme, "traj-1") == "0"  # one replica: 0
        _chat(globex, "traj-1")
        _chat(acme)  # no program id: a one-call program, ended with its call
        with httpx.Client(base_url=served.url, timeout=60) as http:
            mine = http.get("/v1/proxy/programs", headers=served.headers("acme")).json()
            assert [(p["program_id"], p["calls"], p["in_flight"]) for p in mine["data"]] == [("traj-1", 2, 0)]
            assert mine["data"][0]["step"] == "client" and mine["idle_timeout_s"] > 0
            theirs = http.get("/v1/proxy/programs", headers=served.headers("globex")).json()
            assert [p["calls"] for p in theirs["data"]] == [1]  # globex's own traj-1, not acme's
            done = http.post("/v1/proxy/programs/traj-1/release", headers=served.headers("acme"))
            assert done.status_code == 200 and done.json()["calls"] == 2
            assert http.get("/v1/proxy/programs", headers=served.headers("acme")).json()["data"] == []
            # the deprecated path releases too (globex's program; acme's is gone: 404)
            old = http.post("/v1/programs/traj-1/release", headers=served.headers("globex"))
            assert old.status_code == 200 and old.json()["calls"] == 1
            gone = http.post("/v1/programs/traj-1/release", headers=served.headers("acme"))
            assert gone.status_code == 404
            too_long = http.post(
                "/v1/chat/completions",
                json={
                    "model": "legato-default",
                    "messages": [{"role": "user", "content": "x"}],
                    "max_tokens": 1,
                },
                headers={**served.headers("acme"), "X-Session-ID": "s" * 300},
            )
            assert too_long.status_code == 400 and "X-Session-ID" in too_long.json()["error"]["message"]
            schema = http.get("/openapi.json").json()
        assert schema["components"]["securitySchemes"]["ApiKey"] == {
            "type": "http",
            "scheme": "bearer",
            "description": schema["components"]["securitySchemes"]["ApiKey"]["description"],
        }
        assert schema["paths"]["/v1/programs/{program_id}/release"]["post"]["deprecated"] is True
        assert {"ApiKey": []} in schema["paths"]["/v1/proxy/programs"]["get"]["security"]


def test_official_client_with_key_empty_in_keyless_mode(tmp_path: Path) -> None:
    with legato_server(tmp_path, tiny_engine(), policy="legato", tenants=()) as served:
        client = OpenAI(base_url=f"{served.url}/v1", api_key="EMPTY", max_retries=0, timeout=60)
        assert _chat(client, "agent-1") == "0"
        listed = httpx.get(f"{served.url}/v1/proxy/programs", headers={"Authorization": "Bearer EMPTY"})
        assert [p["program_id"] for p in listed.json()["data"]] == ["agent-1"]
