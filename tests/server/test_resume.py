"""Resuming after a stop inside a tool (in-process, the executor alone), and a graceful server
restart over HTTP: runs are suspended, not cancelled, and the next server finishes them."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TypedDict

import anyio
import httpx
import pytest

from legato.programs.builder import Program, llm, ref, tool
from legato.programs.calls import RunStatus
from legato.programs.executor import Executor
from legato.programs.journal import InMemoryJournalStore
from legato.tools.base import ToolContext
from legato.tools.registry import ToolRegistry
from legato.tools.registry import tool as register_tool
from legato.tools.runtime import ToolRuntime
from tests.doubles.engines import FakeEngine
from tests.programs.helpers import RecordingScheduler, wait_until
from tests.server.conftest import MakeServerFactory
from tests.server.programs import gated_program


class S(TypedDict):
    q: str
    a: str
    b: str
    c: str


@pytest.mark.parametrize("kind", ["pure", "idempotent", "other"])
async def test_a_tool_stopped_mid_flight_reruns_only_if_pure_or_idempotent(kind: str) -> None:
    calls: list[str] = []
    keys: list[str] = []
    release = threading.Event()  # the tool runs on a worker thread: a thread-safe signal
    registry = ToolRegistry()
    pure = kind == "pure"

    @register_tool(name="effect", pure=pure, idempotent=kind == "idempotent", registry=registry)
    async def effect(ctx: ToolContext, text: str) -> str:
        calls.append(text)
        keys.append(ctx.idempotency_key)
        while not release.is_set():  # noqa: ASYNC110 - set from another thread
            await anyio.sleep(0.01)
        return text.upper()

    p = Program(S, name="stops")
    p.add_node("one", llm(slots=["q"], output="a"))
    p.add_node("two", tool("effect", args={"text": ref("a")}, output="b"))
    p.add_node("three", llm(slots=["b"], output="c"))
    p.add_edge("one", "two")
    p.add_edge("two", "three")
    program = p.compile(registry)
    engine = FakeEngine()
    journal = InMemoryJournalStore()
    async with ToolRuntime(registry) as tools:
        async with Executor(RecordingScheduler(engine), tools, journal=journal) as ex:
            handle = ex.submit(program, {"q": "hi"}, run_id="r")
            await wait_until(lambda: len(calls) == 1)
            handle.cancel()  # the process "stops" while the tool runs
        markers = [s for s in await journal.steps("r") if s.status == "started"]
        assert [m.node for m in markers] == ([] if pure else ["two"])
        release.set()
        async with Executor(RecordingScheduler(engine), tools, journal=journal) as ex:  # "restarted"
            resumed = await ex.run(program, {"q": "hi"}, run_id="r")
    assert len(engine.requests) == (1 if kind == "other" else 2)  # the first LLM step is never redone
    if kind != "other":
        assert resumed.status == RunStatus.SUCCEEDED and len(calls) == 2
        assert [s.node for s in resumed.steps] == ["one", "two", "three"]
        assert keys == ["r:1:1", "r:1:1"]  # step 1 (its marker), attempt 1: the same key again
    else:
        assert resumed.status == RunStatus.INTERRUPTED and len(calls) == 1
        assert "neither pure nor idempotent" in (resumed.error or "")


def test_graceful_restart_suspends_and_resumes(make_server: MakeServerFactory, tmp_path: Path) -> None:
    db = tmp_path / "graceful.db"
    gate, rec = tmp_path / "gate", tmp_path / "rec"
    inputs = {"topic": "t", "record_file": str(rec), "gate_file": str(gate)}
    with make_server(db_path=db) as (url, _), httpx.Client(base_url=url, timeout=30) as c:
        run_id = c.post("/v1/runs", json={"program": gated_program(), "inputs": inputs}).json()["id"]
        deadline = time.monotonic() + 60
        while not rec.exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
    # the server stopped (lifespan exit): the run is still in flight in the store
    with make_server(db_path=db) as (url, _), httpx.Client(base_url=url, timeout=30) as c:
        assert c.get(f"/v1/runs/{run_id}").json()["status"] in ("running", "pending")
        gate.touch()
        with c.stream("GET", f"/v1/runs/{run_id}/events") as events:
            for _ in events.iter_lines():
                pass
        run = c.get(f"/v1/runs/{run_id}").json()
        assert run["status"] == "succeeded" and run["resumed"] == 1
        assert len(rec.read_text().splitlines()) == 1
