"""One program's page: its graph with each node's state, its journal, its events, its tokens.

A declarative run's graph comes from the spec it was started with (nodes, edges, routers'
destinations); each node's state from the run's node events (`running` after `node_started`,
then the `status` of `node_finished`: ok, failed, exhausted), so the picture follows the run live.
Events and tokens come from the run manager's in-memory window while the run is live (tokens are
never stored), from the store afterwards. A proxy program declares no graph: its page shows the
program's calls and the scheduler's decisions about it. Another tenant's run is a 404, exactly
like an unknown id.
"""

from __future__ import annotations

from typing import Any

from legato.server.deps import not_found
from legato.server.programs_tracker import Program
from legato.server.runs import jsonable
from legato.server.state import ServerState
from legato.server.store.base import EventRecord
from legato.server.ui.viewer import Viewer
from legato.server.views import step_view

MAX_EVENTS = 200
MAX_TOKEN_CHARS = 4000


def graph_of(spec: dict[str, Any]) -> dict[str, Any]:
    """Nodes and edges of a program spec (routers become one edge per destination)."""
    nodes = [{"name": n.get("name"), "kind": n.get("kind", "llm")} for n in spec.get("nodes", [])]
    edges = [{"source": e.get("source"), "target": e.get("target")} for e in spec.get("edges", [])]
    for r in spec.get("routers", []):
        for dest in r.get("destinations", []):
            edges.append({"source": r.get("source"), "target": dest, "conditional": True})
    return {"entry": spec.get("entry"), "nodes": nodes, "edges": edges}


def node_states(events: list[EventRecord]) -> dict[str, str]:
    states: dict[str, str] = {}
    for e in events:
        if e.node is None:
            continue
        if e.kind == "node_started":
            states[e.node] = "running"
        elif e.kind == "node_finished":
            states[e.node] = str(e.data.get("status", "ok"))
    return states


def _event_view(e: EventRecord) -> dict[str, Any]:
    return {"seq": e.seq, "kind": e.kind, "node": e.node, "at": e.at, "data": jsonable(e.data)}


def _proxy_program(state: ServerState, run_id: str) -> Program | None:
    tracker = getattr(state.extras.get("proxy"), "tracker", None)
    if tracker is None:
        return None
    return next((p for p in list(tracker.programs.values()) if p.run_id == run_id), None)


def _decisions(state: ServerState, run_id: str) -> list[dict[str, Any]]:
    log = getattr(state.inner_scheduler, "decision_log", None)
    if log is None:
        return []
    return [
        {"at": d.at, "kind": d.kind, "detail": d.detail, "reason": d.reason, "replica": d.replica}
        for d in list(log.entries)
        if d.run_id == run_id
    ][-50:]


async def run_page(state: ServerState, viewer: Viewer, run_id: str) -> dict[str, Any]:
    program = _proxy_program(state, run_id)
    if program is not None and viewer.sees(program.tenant):
        return {
            "id": run_id,
            "kind": "proxy",
            "name": program.program_id,
            "status": "running" if program.in_flight else "between calls",
            "calls": program.calls,
            "step": program.tool,
            "graph": None,
            "steps": [],
            "events": [],
            "tokens": "",
            "decisions": _decisions(state, run_id),
        }
    live = state.runs.live.get(run_id)
    record = live.record if live is not None else await state.store.get_run(run_id)
    if record is None or not viewer.sees(record.tenant_id):
        raise not_found("run", run_id, "the programs panel lists the runs you can see")
    recent = list(live.recent) if live is not None else []
    if recent and recent[0].seq == 0:  # the in-memory window still holds the whole run
        events = [e for e in recent if e.kind != "token"]
    else:
        events = await state.store.events(run_id, -1, 10_000)
    tokens = "".join(str(e.data.get("text", "")) for e in recent if e.kind == "token")
    steps = await state.store.steps(run_id)
    graph = graph_of(record.spec if isinstance(record.spec, dict) else {})
    graph["states"] = node_states(events)
    return {
        "id": run_id,
        "kind": "run",
        "name": record.program_name,
        "status": record.status,
        "error": record.error,
        "graph": graph,
        "steps": [step_view(s).model_dump() for s in steps][-MAX_EVENTS:],
        "events": [_event_view(e) for e in events][-MAX_EVENTS:],
        "tokens": tokens[-MAX_TOKEN_CHARS:],
        "decisions": _decisions(state, run_id),
    }


__all__ = ["graph_of", "node_states", "run_page"]
