"""Streaming through the proxy on the real-time simulated engine: a client that goes away
mid-stream aborts its call at once (no KV or batch seat held for nobody), the program stays live
for its next call, and concurrent agents of one tenant each get whole answers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from legato.sim.realtime import RealtimeSimConfig, RealtimeSimEngine
from tests.server.proxy_harness import Served, legato_server

MODEL = "sim-llama-3.1-8b"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    # time_scale 20: each decode step takes ~0.15 s, so a 200-token answer streams for ~30 s
    engine = RealtimeSimEngine(RealtimeSimConfig(time_scale=20.0, max_model_len=4096))
    with legato_server(tmp_path, engine, policy="continuum", tenants=("acme",)) as s:
        yield s


def test_disconnect_mid_stream_aborts_the_call_and_keeps_the_program(served: Served) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "write a long essay"}],
        "max_tokens": 200,
        "stream": True,
        "program_id": "essay",
    }
    engine: RealtimeSimEngine = served.state.engine  # type: ignore[assignment]
    with (
        httpx.Client(base_url=served.url, timeout=60, headers=served.headers("acme")) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        lines = response.iter_lines()
        seen = [line for _, line in zip(range(4), lines, strict=False)]
        assert any(line.startswith("data: {") for line in seen)
        assert anyio.run(engine.stats).running == 1
    # the client hung up: the engine request is aborted well before its 30 s of decoding
    for _ in range(200):
        if anyio.run(engine.stats).running == 0:
            break
        anyio.run(anyio.sleep, 0.05)
    assert anyio.run(engine.stats).running == 0
    tracker = served.state.extras["proxy"].tracker
    program = tracker.programs[(served.tenant_ids["acme"], "essay")]
    assert program.in_flight == 0 and program.calls == 1


def test_concurrent_agents_each_get_a_whole_streamed_answer(served: Served) -> None:
    results: dict[int, tuple[int, str, bool]] = {}

    async def agent(client: httpx.AsyncClient, i: int) -> None:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"agent {i}"}],
            "max_tokens": 5,
            "stream": True,
            "program_id": f"agent-{i}",
            "is_last_step": True,
        }
        text, done = [], False
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    for choice in json.loads(line[6:])["choices"]:
                        text.append(choice["delta"].get("content") or "")
        results[i] = (response.status_code, "".join(text), done)

    async def main() -> None:
        async with httpx.AsyncClient(
            base_url=served.url, timeout=60, headers=served.headers("acme")
        ) as client:
            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    for i in range(16):
                        tg.start_soon(agent, client, i)

    anyio.run(main)
    assert sorted(results) == list(range(16))
    assert all(status == 200 and done and len(text) == 5 for status, text, done in results.values())
    assert not served.state.extras["proxy"].tracker.programs  # every program ended with its last step
