"""The hardened uvicorn protocol on a real socket: a stalled client gets 408 (headers or body), an
oversize header block 431 (read by the client, not a reset), and forwarded headers count only
from trusted proxies."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn
from fastapi import FastAPI, Request

from legato.engine_adapter.server.http_server import MAX_HEADER_BYTES, http_config


def _app() -> FastAPI:
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, object]:
        body = await request.body()
        client = request.client.host if request.client else None
        return {"client": client, "bytes": len(body), "scheme": request.url.scheme}

    return app


@contextmanager
def _serve(**kwargs: object) -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = http_config(_app(), log_level="warning", **kwargs)  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)


def _raw(port: int, data: bytes, *, wait_s: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as conn:
        conn.sendall(data)
        chunks = []
        while True:
            try:
                chunk = conn.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def test_stalled_headers_and_bodies_get_408_after_the_read_timeout() -> None:
    with _serve(read_timeout_s=0.5) as port:
        start = time.monotonic()
        answer = _raw(port, b"POST /echo HTTP/1.1\r\nHost: x\r\n")  # headers never finish
        assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
        assert b"not received within 0.5 s" in answer
        answer = _raw(port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
        assert time.monotonic() - start < 4
        # a client that sends on time is served, also on a slow-but-steady connection
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            assert client.post("/echo", content=b"x" * 1000).json()["bytes"] == 1000


def test_an_oversize_header_block_is_answered_431() -> None:
    with _serve() as port, httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        response = client.post("/echo", headers={"X-Big": "a" * 1_000_000})
        assert response.status_code == 431
        assert str(MAX_HEADER_BYTES) in response.json()["error"]["message"]
        assert client.post("/echo", headers={"X-Fine": "a" * 8000}).status_code == 200


def test_forwarded_headers_count_only_from_trusted_proxies() -> None:
    spoof = {"X-Forwarded-For": "10.1.2.3", "X-Forwarded-Proto": "https"}
    with _serve() as port:  # default: nobody is trusted, not even loopback
        seen = httpx.post(f"http://127.0.0.1:{port}/echo", headers=spoof).json()
        assert seen["client"] == "127.0.0.1" and seen["scheme"] == "http"
    with _serve(trusted_proxies="127.0.0.1") as port:
        seen = httpx.post(f"http://127.0.0.1:{port}/echo", headers=spoof).json()
        assert seen["client"] == "10.1.2.3" and seen["scheme"] == "https"
