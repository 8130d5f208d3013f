"""`/ui`: the operator page and the JSON it polls.

`GET /ui` is a static page (HTML, one script, one stylesheet, shipped in the package: no CDN, no
build step); it holds no data, so it needs no key. Its data endpoints under `/ui/api/` take the
same `Authorization: Bearer <key>` as the rest of the API (the page asks for the key and keeps it
in the tab's session storage) and answer what the viewer may see (`viewer.py`):

- `GET /ui/api/snapshot`: replicas, programs, tenants and recent decisions in one answer (what
  the page polls every second);
- `GET /ui/api/replicas`, `/ui/api/programs`, `/ui/api/tenants`, `/ui/api/decisions`: one panel;
- `GET /ui/api/runs/{run_id}`: one program's page (graph, journal, events, tokens).

The panels read in-memory state only (`live_state` refreshes what needs an await in the
background), so an answer never waits behind the store or a busy engine.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Path, Query
from fastapi.responses import HTMLResponse, Response

from legato.server.deps import StateDep
from legato.server.errors import responses
from legato.server.state import ServerState
from legato.server.ui.live_state import UiState
from legato.server.ui.programs import program_rows
from legato.server.ui.replicas import replicas_panel
from legato.server.ui.run_page import run_page
from legato.server.ui.tenants import tenants_panel
from legato.server.ui.viewer import Viewer, ViewerDep

STATIC = {  # file -> media type; the only files served (no path from the client reaches the disk)
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
Limit = Annotated[int, Query(ge=1, le=1000, description="rows to return")]


def _json(value: Any) -> Response:
    """Plain `json.dumps`: the panels are plain data already, and skipping FastAPI's per-field
    encoding pass keeps the snapshot of thousands of programs cheap."""
    body = json.dumps(value, allow_nan=False, separators=(",", ":"))
    return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})


def _asset(name: str) -> bytes:
    return resources.files("legato.server.ui").joinpath("static", name).read_bytes()


def _ui(state: ServerState) -> UiState:
    ui = state.extras.get("ui")
    if not isinstance(ui, UiState):
        ui = state.extras["ui"] = UiState()
    return ui


def _policy(state: ServerState) -> str:
    policy = getattr(state.inner_scheduler, "policy", None)
    return str(getattr(policy, "name", "passthrough"))


async def _ready(state: ServerState) -> UiState:
    ui = _ui(state)
    await ui.ensure(state)
    return ui


def decisions_panel(state: ServerState, viewer: Viewer, names: dict[str, str], limit: int) -> dict[str, Any]:
    log = getattr(state.inner_scheduler, "decision_log", None)
    if log is None:
        return {"available": False, "counts": {}, "entries": []}
    only = None if viewer.admin else frozenset({viewer.tenant_id or ""})
    entries = []
    for d in log.recent(limit, only):
        row = asdict(d)
        row["tenant"] = names.get(d.tenant or "", d.tenant)
        entries.append(row)
    return {"available": True, "counts": dict(log.counts) if viewer.admin else {}, "entries": entries}


def programs_panel(state: ServerState, viewer: Viewer, names: dict[str, str], limit: int) -> dict[str, Any]:
    tracker = getattr(state.extras.get("proxy"), "tracker", None)
    if tracker is not None:
        tracker.sweep()
    rows, counts, total = program_rows(state, viewer, names, limit)
    return {"total": total, "by_state": counts, "rows": [asdict(r) for r in rows]}


def router() -> APIRouter:
    r = APIRouter(tags=["operator page"])

    @r.get("/ui", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(_asset("index.html"), headers={"Cache-Control": "no-cache"})

    @r.get("/ui/static/{name}", include_in_schema=False)
    async def asset(name: Annotated[str, Path(max_length=32)]) -> Response:
        if name not in STATIC:
            return Response(status_code=404)
        return Response(_asset(name), media_type=STATIC[name], headers={"Cache-Control": "no-cache"})

    @r.get("/ui/api/snapshot", summary="Everything the operator page shows", responses=responses())
    async def snapshot(viewer: ViewerDep, state: StateDep, limit: Limit = 100) -> Response:
        ui = await _ready(state)
        start = time.perf_counter()  # from here on nothing awaits: in-memory state only
        names = ui.names()
        answer = {
            "at": time.time(),
            "viewer": {"label": viewer.label, "admin": viewer.admin},
            "policy": _policy(state),
            "replicas": replicas_panel(state, ui.busy, ui.engine_stats or []),
            "programs": programs_panel(state, viewer, names, limit),
            "tenants": tenants_panel(state, viewer, ui.tenants or []),
            "decisions": decisions_panel(state, viewer, names, 50),
        }
        answer["took_s"] = time.perf_counter() - start  # `legato bench load` reports it
        return _json(answer)

    @r.get("/ui/api/replicas", summary="Replicas: calls, KV per tier, hit rate, busy", responses=responses())
    async def replicas(viewer: ViewerDep, state: StateDep) -> Response:
        ui = await _ready(state)
        return _json(replicas_panel(state, ui.busy, ui.engine_stats or []))

    @r.get("/ui/api/programs", summary="Live programs visible to this key", responses=responses())
    async def programs(viewer: ViewerDep, state: StateDep, limit: Limit = 100) -> Response:
        ui = await _ready(state)
        return _json(programs_panel(state, viewer, ui.names(), limit))

    @r.get("/ui/api/tenants", summary="Tenants: weight, share, fairness, quotas", responses=responses())
    async def tenants(viewer: ViewerDep, state: StateDep) -> Response:
        ui = await _ready(state)
        return _json(tenants_panel(state, viewer, ui.tenants or []))

    @r.get("/ui/api/decisions", summary="The scheduler's recent decisions", responses=responses())
    async def decisions(viewer: ViewerDep, state: StateDep, limit: Limit = 100) -> Response:
        ui = await _ready(state)
        return _json(decisions_panel(state, viewer, ui.names(), limit))

    @r.get("/ui/api/runs/{run_id}", summary="One program's page", responses=responses())
    async def run(
        run_id: Annotated[str, Path(max_length=128)], viewer: ViewerDep, state: StateDep
    ) -> Response:
        return _json(await run_page(state, viewer, run_id))

    return r


def install_ui(app: FastAPI, state: ServerState) -> UiState:
    """The routes; the returned `UiState.run` is the refresh loop the app's lifespan runs."""
    app.include_router(router())
    return _ui(state)


__all__ = ["UiState", "install_ui", "router"]
