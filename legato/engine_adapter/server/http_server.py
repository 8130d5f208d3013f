"""uvicorn set up for clients that cannot be trusted to behave: `http_config(app, ...)`, used by
`legato serve` and `legato engine serve`.

What stock uvicorn (h11) does not do, its `HardenedH11Protocol` does:
- **read timeout**: a client must send a whole request (headers and body) within
  `read_timeout_s` of its first byte, and a new connection must start one within that time;
  otherwise it gets 408 and is closed. uvicorn alone holds a stalled client forever (its
  keep-alive timer only runs between requests).
- **431**: request line plus headers over `MAX_HEADER_BYTES` get `431 Request Header Fields Too
  Large` (h11 reports it; uvicorn answered 400). The server then stops reading but keeps the
  socket open for a moment (`LINGER_S`), so the client reads the answer instead of a reset.
- **forwarded headers** (`X-Forwarded-For`, `-Proto`) are believed only from `trusted_proxies`;
  none by default (uvicorn trusts 127.0.0.1 by default, so anything on the host could claim to
  be any client, e.g. the loopback address that single-tenant mode lets in without a key).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_HEADER_BYTES = 16 * 1024  # h11's own default; nginx allows 8 KiB per header line by default
READ_TIMEOUT_S = 60.0  # nginx's defaults for client_header_timeout and client_body_timeout
LINGER_S = 2.0  # after refusing a request: how long to drain the client's bytes before closing

_INCOMPLETE = (h11.IDLE, h11.SEND_BODY)  # the client's side of a request not yet fully read


class _Connection(h11.Connection):
    """An h11 connection that remembers why it refused the client's bytes (the status h11
    suggests, e.g. 431 for an oversize header block)."""

    refused: h11.RemoteProtocolError | None = None

    def next_event(self) -> Any:
        try:
            return super().next_event()
        except h11.RemoteProtocolError as exc:
            self.refused = exc
            raise


class HardenedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a read timeout, 431 answers and a lingering close."""

    read_timeout_s = READ_TIMEOUT_S
    max_header_bytes = MAX_HEADER_BYTES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = self._conn = _Connection(h11.SERVER, self.max_header_bytes)
        self._read_timer: asyncio.TimerHandle | None = None
        self._got_bytes = False  # of the request being read
        self._draining = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._draining:
            return  # the answer is sent: drop the rest of a refused request
        self._got_bytes = True
        super().data_received(data)
        if self.conn.their_state in _INCOMPLETE and not self.transport.is_closing():
            self._arm()
        else:
            self._disarm()

    def on_response_complete(self) -> None:
        self._got_bytes = False
        super().on_response_complete()

    def send_400_response(self, msg: str) -> None:
        refused = self._conn.refused
        if refused is not None and refused.error_status_hint == 431:
            self._refuse(431, f"request line and headers exceed {self.max_header_bytes} bytes")
        else:
            super().send_400_response(msg)

    # --- the read timer -----------------------------------------------------------------------

    def _arm(self) -> None:
        if self._read_timer is None:
            self._read_timer = self.loop.call_later(self.read_timeout_s, self._read_timed_out)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing() or self.conn.their_state not in _INCOMPLETE:
            return
        cycle = self.cycle
        started = cycle is not None and cycle.response_started
        if self._got_bytes and not started and self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            self._refuse(408, f"the request was not received within {self.read_timeout_s:g} s")
        else:
            self.transport.close()
        if cycle is not None:  # the app waiting for the body sees a disconnect; its answer is dropped
            cycle.disconnected = True
            cycle.message_event.set()

    # --- refusals -----------------------------------------------------------------------------

    def _refuse(self, status: int, message: str) -> None:
        """Answer `status` (OpenAI's error shape, as every route) and close after draining."""
        body = json.dumps(
            {"error": {"message": message, "type": "request_error", "param": None, "code": status}}
        )
        head = (
            f"HTTP/1.1 {status} {h11_reason(status)}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode("ascii") + body.encode())
        self._draining = True
        self._disarm()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)


def h11_reason(status: int) -> str:
    return {408: "Request Timeout", 431: "Request Header Fields Too Large"}.get(status, "Error")


def http_config(
    app: Any,
    *,
    read_timeout_s: float = READ_TIMEOUT_S,
    trusted_proxies: str | None = None,
    max_header_bytes: int = MAX_HEADER_BYTES,
    **kwargs: Any,
) -> uvicorn.Config:
    """A `uvicorn.Config` with `HardenedH11Protocol`; forwarded headers only from
    `trusted_proxies` (comma-separated addresses or networks, `*` for any; None: ignored)."""
    protocol = type(
        "HardenedH11Protocol",
        (HardenedH11Protocol,),
        {"read_timeout_s": read_timeout_s, "max_header_bytes": max_header_bytes},
    )
    return uvicorn.Config(
        app,
        http=protocol,
        proxy_headers=trusted_proxies is not None,
        forwarded_allow_ips=trusted_proxies,
        **kwargs,
    )
