"""Run the REST service for tests: in a uvicorn thread (app objects in this process) or as a
real `legato serve` subprocess (for kill -9)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from legato.engine_adapter.torch import load_engine
from tests.tiny_model import tiny_model_config

ROOT = Path(__file__).resolve().parents[2]
TOOLS_FILE = Path(__file__).with_name("server_tools.py")
STARTUP_TIMEOUT_S = 90.0

TINY = tiny_model_config(max_position_embeddings=512)


def tiny_engine() -> Any:
    """Factory for `legato serve --engine tests.server.serving:tiny_engine`: a tiny seeded
    model (greedy decoding is deterministic), so subprocess tests start and run fast."""
    return load_engine(model_config=TINY, num_blocks=256, max_num_batched_tokens=256)


def tiny_tiered_engine() -> Any:
    """`tiny_engine` with a small device cache over a host-RAM tier and, when the environment
    names one in `LEGATO_TEST_KV_REDIS`, a Redis tier (what the operator page test shows)."""
    return load_engine(
        model_config=TINY,
        num_blocks=48,
        max_num_batched_tokens=256,
        host_tier_bytes=32 << 20,
        redis_url=os.environ.get("LEGATO_TEST_KV_REDIS") or None,
        redis_chunk_blocks=2,
        redis_op_timeout_s=1.0,
    )


@contextmanager
def serve_in_thread(app: FastAPI) -> Iterator[str]:
    """Serve `app` (lifespan included) on a free 127.0.0.1 port; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=3))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start within 30 s")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


class ServeProcess:
    """`legato serve --port 0 ARGS` as a subprocess; `url` once it printed its address and
    `/readyz` answers 200. Its output goes to `log_path`."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log_path = log_path
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def _urls(self) -> list[str]:
        if not self.log_path.exists():
            return []
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [
            ln.split(" at ", 1)[1].split()[0] for ln in lines if ln.startswith("Legato serving at http://")
        ]

    def start(self) -> str:
        """Start (or restart: the log file is appended to) and wait until ready."""
        seen = len(self._urls())
        cmd = [sys.executable, "-m", "legato.cli", "serve", "--port", "0", *self.args]
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps its own copy
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=ROOT, env=self.env)
        log.close()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while len(urls := self._urls()) <= seen:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text()[-4000:]
                raise RuntimeError(f"legato serve did not start (exit {self.proc.poll()}):\n{tail}")
            time.sleep(0.05)
        self.url = urls[-1]
        while True:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return self.url
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"legato serve never became ready:\n{self.log_path.read_text()[-4000:]}")
            time.sleep(0.1)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
