"""One engine request from an HTTP handler's point of view: the first chunk awaited before the
response starts (so engine errors become status codes), server-sent events that abort the
engine request the moment the client goes away, and the same for non-streaming requests.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from legato.engine_adapter.base import (
    Engine,
    EngineError,
    GenerateRequest,
    TokenChunk,
)
from legato.engine_adapter.server.errors import ApiError, error_body

# How long an engine may stay silent (no chunk) before the request fails with 504. Generous:
# a long prefill on CPU under load can take a while, but a hung engine must not hang clients.
DEFAULT_CHUNK_TIMEOUT_S = 300.0
# Bounded cleanup: aborting an engine request after a disconnect must not block shutdown.
ABORT_TIMEOUT_S = 5.0


# --- one engine request in flight ------------------------------------------------------------


class Generation:
    """One engine request. `start()` awaits the first chunk so engine errors surface before any
    HTTP response begins; `close()` aborts the request unless it finished."""

    def __init__(self, engine: Engine, request: GenerateRequest, chunk_timeout_s: float) -> None:
        self.engine = engine
        self.request = request
        self._timeout = chunk_timeout_s
        self._iter = engine.generate(request).__aiter__()
        self._first: TokenChunk | None = None
        self.finished = False

    async def _next(self) -> TokenChunk | None:
        try:
            with anyio.fail_after(self._timeout):
                chunk = await self._iter.__anext__()
        except StopAsyncIteration:
            self.finished = True
            return None
        except TimeoutError as exc:
            raise ApiError(504, f"the engine produced no output for {self._timeout:.0f} s") from exc
        if chunk.finished:
            self.finished = True
        return chunk

    async def start(self) -> TokenChunk:
        try:
            first = await self._next()
        except EngineError as exc:
            await self.close()
            raise ApiError(400, str(exc)) from exc
        except BaseException:
            await self.close()
            raise
        if first is None:
            raise ApiError(503, "the engine ended the request without any output")
        self._first = first
        return first

    async def chunks(self) -> AsyncIterator[TokenChunk]:
        """All chunks, the one `start()` fetched first."""
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        while not self.finished:
            chunk = await self._next()
            if chunk is None:
                return
            yield chunk

    async def close(self) -> None:
        # Best effort and bounded: the request is over for the client whatever happens here.
        with (
            anyio.CancelScope(shield=True),
            anyio.move_on_after(ABORT_TIMEOUT_S),
            contextlib.suppress(EngineError),
        ):
            closer = getattr(self._iter, "aclose", None)
            if closer is not None:
                await closer()
            if not self.finished:
                await self.engine.abort(self.request.request_id)


class EventStream(StreamingResponse):
    """Server-sent events that always watch for the client going away (whatever ASGI spec
    version the server speaks) and always close the body, so a disconnect aborts the engine
    request immediately rather than whenever the generator is garbage-collected."""

    def __init__(self, body: AsyncIterator[str]) -> None:
        super().__init__(body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._body = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as tg:

                async def stream() -> None:
                    with contextlib.suppress(OSError):  # the client went away mid-send
                        await self.stream_response(send)
                    tg.cancel_scope.cancel()

                tg.start_soon(stream)
                await self.listen_for_disconnect(receive)
                tg.cancel_scope.cancel()
        finally:
            closer = getattr(self._body, "aclose", None)
            if closer is not None:
                with anyio.CancelScope(shield=True):
                    await closer()


def sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"


async def _until_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def collect_or_abort(
    request: Request, generation: Generation, stop: anyio.Event | None = None
) -> list[TokenChunk] | None:
    """All chunks of a non-streaming request; None (and the engine request aborted) if the
    client disconnected first. When `stop` is set first (an RL rollout aborted by its owner),
    the request is aborted and the chunks so far are returned."""
    chunks: list[TokenChunk] = []
    disconnected = False
    # Raised after the task group, not inside it, where anyio would wrap it in an ExceptionGroup.
    error: ApiError | None = None
    try:
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                nonlocal disconnected
                await _until_disconnect(request)
                disconnected = True
                tg.cancel_scope.cancel()

            tg.start_soon(watch)
            if stop is not None:

                async def halt() -> None:
                    await stop.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(halt)
            try:
                async for chunk in generation.chunks():
                    chunks.append(chunk)
            except EngineError as exc:
                error = ApiError(503, f"the engine failed the request: {exc}")
            except ApiError as exc:
                error = exc
            tg.cancel_scope.cancel()
    finally:
        await generation.close()
    if error is not None:
        raise error
    return None if disconnected else chunks


async def guarded(generation: Generation, events: AsyncIterator[str]) -> AsyncIterator[str]:
    """Run `events`, turn a mid-stream engine failure into an error event (the status line is
    already sent), and always close the engine request."""
    try:
        async for event in events:
            yield event
    except (EngineError, ApiError) as exc:
        status = exc.status if isinstance(exc, ApiError) else 503
        yield sse(error_body(status, str(exc)))
        yield sse("[DONE]")
    finally:
        await generation.close()
