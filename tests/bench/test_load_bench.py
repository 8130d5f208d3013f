"""`legato bench load` at tiny size against the whole REST app (real socket, the real-time
simulated engine): every streamed request completes, memory is sampled from /metrics, and the
report (table and JSON) says so, with the operator page's data endpoint times; a server that
refuses the key is a clear CLI error."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from typer.testing import CliRunner

from legato.bench.load_bench import sse_events
from legato.cli import app
from legato.sim.realtime import RealtimeSimConfig, RealtimeSimEngine
from tests.server.proxy_harness import legato_server


def test_load_bench_drives_agents_and_reports(tmp_path: Path) -> None:
    engine = RealtimeSimEngine(RealtimeSimConfig())
    out = tmp_path / "load.json"
    with legato_server(tmp_path, engine, policy="continuum", tenants=("acme",)) as served:
        args = ["bench", "load", "--url", served.url, "--runs", "4", "--duration", "3", "--turns", "2"]
        args += ["--tool-s", "0.1", "--max-tokens", "8", "--json", str(out)]
        result = CliRunner().invoke(app, args, env={"LEGATO_API_KEY": served.keys["acme"]})
        assert result.exit_code == 0, result.output
        bad = CliRunner().invoke(
            app, ["bench", "load", "--url", served.url, "--runs", "1", "--duration", "1"]
        )
        ramp = CliRunner().invoke(  # refused before any request
            app, ["bench", "load", "--url", served.url, "--duration", "1", "--ramp-up", "1"]
        )
    report = json.loads(out.read_text())
    assert report["requests_failed"] == 0 and report["requests_ok"] >= 4
    assert report["programs_completed"] >= 2
    assert report["latency_s"]["p50"] > 0 and report["ttft_s"]["p99"] <= report["latency_s"]["max"]
    assert report["cached_prompt_fraction"] > 0  # turn 2 reuses turn 1's prefix
    assert len(report["rss_mb"]) >= 2 and all(mb > 0 for _, mb in report["rss_mb"])
    assert "api_key" not in report["config"]
    assert "requests            ok" in result.output and "server RSS (MB)" in result.output
    ui = report["ui_snapshot"]  # the operator page's data endpoint, polled during the run
    assert ui["polls"] >= 2 and ui["live_programs_max"] >= 1 and ui["server_ms"]["p50"] > 0
    assert "/ui data endpoint" in result.output
    assert bad.exit_code == 2 and "401" in bad.output
    assert ramp.exit_code == 2 and "ramp-up must be" in ramp.output


def test_workflow_mode_submits_runs_and_follows_their_events(tmp_path: Path) -> None:
    import anyio

    from legato.bench.load_bench import LoadConfig, run_load

    engine = RealtimeSimEngine(RealtimeSimConfig())
    with legato_server(tmp_path, engine, policy="continuum", tenants=("acme",)) as served:
        key = served.keys["acme"]
        # the same server named twice stands in for two instances: agents alternate between them
        cfg = LoadConfig(
            served.url, 3, "workflow", 2.0, 3, 6, api_key=key, sample_s=0.5, more_urls=(served.url,),
            ramp_up_s=0.3,
        )  # fmt: skip
        report = anyio.run(run_load, cfg)
    assert report.requests_failed == 0, report.error_examples
    assert report.requests_ok == report.programs_completed >= 3
    assert len(report.instances) == 2 and all(i["rss_mb"] for i in report.instances)
    assert report.post_runs_s["p50"] > 0
    assert report.post_runs_warm_s["count"] <= report.post_runs_s["count"] == report.requests_ok
    assert sum(w["count"] for w in report.post_runs_by_window) == report.requests_ok
    assert "started over 0.3 s" in report.table()
    assert report.completion_tokens_per_s > 0 and report.ttft_s["p50"] <= report.latency_s["p50"]


async def test_sse_parser_splits_events_across_chunk_boundaries() -> None:
    """The client's byte-level SSE parser: events split anywhere between network reads, comment
    lines and events without data are skipped, ids and kinds come through."""
    wire = (
        b'id: 0\nevent: status\ndata: {"seq": 0}\n\n: keepalive\n\n'
        b'id: 1\nevent: token\ndata: {"seq": 1, "data": {"text": "a"}}\n\n'
        b'id: 2\nevent: run_finished\ndata: {"seq": 2, "data": {"status": "succeeded"}}\n\n'
    )
    for cut in range(1, len(wire)):  # every place a read may end

        async def chunks(cut: int = cut) -> AsyncIterator[bytes]:
            yield wire[:cut]
            yield wire[cut:]

        response = httpx.Response(200, content=chunks())
        events = [event async for event in sse_events(response)]
        assert [(seq, kind) for seq, kind, _ in events] == [
            (0, b"status"),
            (1, b"token"),
            (2, b"run_finished"),
        ]
        assert json.loads(events[2][2])["data"]["status"] == "succeeded"
