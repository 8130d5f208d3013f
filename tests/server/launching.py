"""What the `legato serve` command-line tests share: a tiny seeded checkpoint on disk (so every
subprocess loads the same weights in milliseconds), `legato serve` / `legato engine serve`
subprocesses, and agent programs driven through the proxy with the official `openai` client."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
from openai import AsyncOpenAI

from legato.engine_adapter.torch import ByteTokenizer, build_default_model, save_checkpoint
from tests.server.serving import ROOT, ServeProcess
from tests.tiny_model import tiny_model_config

CHECKPOINT_NAME = "tiny-ckpt"  # the served model's name (the directory's)


def save_tiny_checkpoint(parent: Path) -> Path:
    path = parent / CHECKPOINT_NAME
    save_checkpoint(build_default_model(0, tiny_model_config()), path, ByteTokenizer())
    return path


@contextmanager
def legato_serve(args: list[str], workdir: Path, name: str) -> Iterator[str]:
    """`legato serve --port 0 --db WORKDIR/NAME.db ARGS` until the block ends; yields its URL."""
    proc = ServeProcess(["--db", str(workdir / f"{name}.db"), *args], workdir / f"{name}.log")
    try:
        yield proc.start()
    finally:
        proc.stop()


def serve_fails(args: list[str], timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """`legato serve ARGS` expected to refuse to start."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "legato.cli", "serve", "--port", "0", "--db", f"{tmp}/x.db", *args]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout_s)


Placed = list[tuple[str, int]]  # per call: (reply text, replica that ran it)


async def run_agents(url: str, programs: int, calls: int, max_tokens: int = 6) -> dict[str, Placed]:
    """`programs` agents at once, each `calls` chat calls tagged with its program_id (a tool
    result is appended between calls); greedy. Returns each program's replies and placements."""
    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="EMPTY", max_retries=0, timeout=120)
    model = (await client.models.list()).data[0].id
    results: dict[str, Placed] = {}

    async def agent(i: int) -> None:
        program_id = f"agent-{i}"
        messages: list[dict[str, str]] = [
            {"role": "system", "content": "You are a careful coding agent."},
            {"role": "user", "content": f"Task {i}: fix the failing test in module m{i % 7}."},
        ]
        placed: Placed = []
        for step in range(calls):
            last = step == calls - 1
            raw = await client.chat.completions.with_raw_response.create(
                model=model,
                messages=messages,  # type: ignore[arg-type]
                max_tokens=max_tokens,
                temperature=0,
                extra_body={
                    "program_id": program_id,
                    "next_tool": "pytest",
                    "is_last_step": last,
                },
            )
            text = raw.parse().choices[0].message.content or ""
            placed.append((text, int(raw.headers["x-legato-replica"])))
            messages += [
                {"role": "assistant", "content": text},
                {"role": "user", "content": f"pytest output {step}: 1 failed"},
            ]
        results[program_id] = placed

    async with client, anyio.create_task_group() as tg:
        for i in range(programs):
            tg.start_soon(agent, i)
    return results
