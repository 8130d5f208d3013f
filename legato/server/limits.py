"""`BodyLimitMiddleware`: refuse request bodies over `Limits.max_body_bytes` with 413.

A pure ASGI middleware: a declared `Content-Length` over the limit is refused before anything is
read (the HTTP server holds the client to its declared length); a body without one (chunked
encoding) is read here and refused as soon as it crosses the limit, else replayed to the app.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from legato.server.errors import ApiError, error_response


class BodyLimitMiddleware:
    def __init__(
        self, app: ASGIApp, max_body_bytes: int, path_limits: Mapping[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.path_limits = dict(path_limits or {})  # e.g. RL weight uploads, far larger than requests

    def _refusal(self, size: str, limit: int) -> ApiError:
        return ApiError(
            413,
            f"request body is {size} bytes; the limit is {limit} (max_body_bytes): "
            "send a smaller program or inputs",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.path_limits.get(scope.get("path", ""), self.max_body_bytes)
        declared_length: int | None = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                declared_length = declared
                if declared > limit:
                    await error_response(self._refusal(str(declared), limit))(scope, receive, send)
                    return
        if declared_length is not None:
            await self.app(scope, receive, send)  # the HTTP server enforces the declared length
            return
        # no Content-Length (chunked): read the body here, up to the limit, then replay it
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body = message.get("body", b"")
            received += len(body)
            if received > limit:
                await error_response(self._refusal(f"more than {limit}", limit))(scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
