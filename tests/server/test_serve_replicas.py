"""`legato serve` with replicas named on the command line, as real subprocesses driven by the
official `openai` client: `--engine torch --engine torch`, and two `legato engine serve`
processes attached as `--engine vllm=URL` (and as one vllm= and one sglang= replica). 32 agent
programs of 3 calls each go through the proxy: every program's calls land on one replica
(`X-Legato-Replica`), both replicas are used, and the greedy replies equal a single-replica
run's. Startup refusals are one clear line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.engine_http.serving import serve_cli
from tests.server.launching import Placed, legato_serve, run_agents, save_tiny_checkpoint, serve_fails
from tests.server.proxy_harness import metric

PROGRAMS, CALLS = 32, 3


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="module")
def checkpoint(workdir: Path) -> Path:
    return save_tiny_checkpoint(workdir)


@pytest.fixture(scope="module")
def single(workdir: Path, checkpoint: Path) -> dict[str, Placed]:
    """The reference: the same programs on one torch replica."""
    with legato_serve(["--engine", "torch", "--checkpoint", str(checkpoint)], workdir, "single") as url:
        return _run(url)


@pytest.fixture(scope="module")
def engine_servers(checkpoint: Path) -> Iterator[list[str]]:
    with (
        serve_cli("--checkpoint", str(checkpoint)) as first,
        serve_cli("--checkpoint", str(checkpoint)) as second,
    ):
        yield [first, second]


def _run(url: str) -> dict[str, Placed]:
    import anyio

    return anyio.run(run_agents, url, PROGRAMS, CALLS)


def _check_replicated(results: dict[str, Placed], single: dict[str, Placed]) -> None:
    assert len(results) == PROGRAMS
    homes = {}
    for program_id, calls in results.items():
        replicas = {replica for _, replica in calls}
        assert len(replicas) == 1, f"{program_id} ran on replicas {sorted(replicas)}"
        homes[program_id] = replicas.pop()
    assert set(homes.values()) == {0, 1}, homes  # both replicas served programs
    texts = {p: [text for text, _ in calls] for p, calls in results.items()}
    assert texts == {p: [text for text, _ in calls] for p, calls in single.items()}
    assert all(replica == 0 for calls in single.values() for _, replica in calls)


def _metrics_lookups(url: str) -> dict[str, float]:
    """Prompt tokens each replica looked up in its KV cache (`legato_cache_lookup_tokens`)."""
    out = {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("legato_cache_lookup_tokens"):
            out[line.split('replica="')[1].split('"')[0]] = float(line.split()[-1])
    return out


def test_two_torch_replicas(workdir: Path, checkpoint: Path, single: dict[str, Placed]) -> None:
    args = ["--engine", "torch", "--engine", "torch", "--checkpoint", str(checkpoint)]
    with legato_serve(args, workdir, "torch2") as url:
        results = _run(url)
        lookups = _metrics_lookups(url)
        gauges = httpx.get(f"{url}/metrics", timeout=30).text
    _check_replicated(results, single)
    assert set(lookups) == {"0", "1"} and all(v > 0 for v in lookups.values())
    per_replica = [metric(gauges, "legato_replica_calls_total", replica=r) for r in ("0", "1")]
    assert sum(per_replica) == PROGRAMS * CALLS and min(per_replica) > 0
    assert "legato_scheduler_decisions_total" in gauges  # default policy legato: its gauges are there


def test_two_engine_servers_as_vllm_replicas(
    workdir: Path, checkpoint: Path, engine_servers: list[str], single: dict[str, Placed]
) -> None:
    args = [a for url in engine_servers for a in ("--engine", f"vllm={url}")]
    with legato_serve([*args, "--checkpoint", str(checkpoint)], workdir, "vllm2") as url:
        results = _run(url)
    _check_replicated(results, single)


def test_a_vllm_and_an_sglang_replica(
    workdir: Path, checkpoint: Path, engine_servers: list[str], single: dict[str, Placed]
) -> None:
    """The same two servers, one driven through the vLLM API and one through SGLang's."""
    args = ["--engine", f"vllm={engine_servers[0]}", "--engine", f"sglang={engine_servers[1]}"]
    with legato_serve([*args, "--checkpoint", str(checkpoint)], workdir, "mixed") as url:
        results = _run(url)
    _check_replicated(results, single)


def _refused(args: list[str], *expected: str) -> None:
    done = serve_fails(args)
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    for part in expected:
        assert part in lines[0], lines[0]


def test_startup_refusals_are_one_clear_line(checkpoint: Path, engine_servers: list[str]) -> None:
    _refused(["--engine", "vllm=ftp://example"], "legato serve:", "vllm=ftp://example", "http(s)://")
    _refused(["--engine", "sglang=http://127.0.0.1:9"], "cannot reach http://127.0.0.1:9", "running?")
    # the seeded default model ("legato-default") next to a server of the tiny checkpoint
    _refused(
        ["--engine", "torch", "--engine", f"vllm={engine_servers[0]}"],
        "the replicas must serve one model",
        "'legato-default'",
        "'tiny-ckpt'",
    )
    _refused(["--engine", "torch", "--engine", "torch", "--policy", "passthrough"], "drives one engine")
    _refused(["--engine", "nonsense"], "use torch")
