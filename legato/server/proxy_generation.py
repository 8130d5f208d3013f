"""One proxied call as the engine server's streaming helpers expect it: `ScheduledGeneration`
takes its chunks from the scheduler instead of an engine and reports how the call ended once;
`server_errors` maps engine-server refusals to the REST service's `ApiError`. Used by
`server/proxy.py`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import anyio
from fastapi.responses import Response

from legato.engine_adapter.base import (
    EngineError,
    GenerateRequest,
    TokenChunk,
)
from legato.engine_adapter.server.errors import ApiError as EngineApiError
from legato.engine_adapter.server.lifecycle import (
    ABORT_TIMEOUT_S,
    Generation,
)
from legato.scheduler.base import CallScheduler
from legato.scheduler.events import LLMCall
from legato.scheduler.runtime import SchedulerError
from legato.server.errors import ApiError
from legato.server.proxy_models import REPLICA_HEADER


def placed(response: Response, generation: ScheduledGeneration) -> Response:
    """Name the replica that ran the call (`X-Legato-Replica`), so placement is observable."""
    if generation.replica is not None:
        response.headers[REPLICA_HEADER] = str(generation.replica)
    return response


# --- one scheduled call, as the engine server's streaming helpers expect it -------------------


@dataclass(slots=True)
class CallOutcome:
    """How a call ended ("abort" until a finished chunk says otherwise). Its tokens are metered
    by the `MeteredScheduler` the call goes through."""

    finish_reason: str = "abort"


class ScheduledGeneration(Generation):
    """A `Generation` whose chunks come from the scheduler (`CallScheduler.generate(call)`),
    not straight from an engine, so the engine server's SSE and disconnect handling apply
    unchanged. It reports how the call ended exactly once, when closed."""

    def __init__(
        self,
        scheduler: CallScheduler,
        call: LLMCall,
        request: GenerateRequest,
        chunk_timeout_s: float,
        on_close: Callable[[CallOutcome], None],
    ) -> None:
        # Not Generation.__init__: that would submit to an engine. These are the fields it uses.
        self.request = request
        self._timeout = chunk_timeout_s
        self._iter = scheduler.generate(call).__aiter__()
        self._first: TokenChunk | None = None
        self.finished = False
        self.outcome = CallOutcome()
        self.replica: int | None = None  # set once the call is placed
        self._on_close: Callable[[CallOutcome], None] | None = on_close

    async def start(self) -> TokenChunk:
        try:
            return await super().start()
        except BaseException:
            await self.close()  # idempotent: the call is reported (and its program updated) once
            raise

    async def _next(self) -> TokenChunk | None:
        try:
            chunk = await super()._next()
        except SchedulerError as exc:
            raise EngineApiError(503, f"the scheduler could not run the call: {exc}") from exc
        if chunk is not None and chunk.finished:
            self.outcome.finish_reason = chunk.finish_reason or "stop"
        return chunk

    async def close(self) -> None:
        # Closing the scheduler's stream aborts the engine request and emits CallFinished.
        with (
            anyio.CancelScope(shield=True),
            anyio.move_on_after(ABORT_TIMEOUT_S),
            contextlib.suppress(EngineError, SchedulerError),
        ):
            closer = getattr(self._iter, "aclose", None)
            if closer is not None:
                await closer()
        report, self._on_close = self._on_close, None
        if report is not None:
            report(self.outcome)


@contextlib.contextmanager
def server_errors() -> Iterator[None]:
    """The engine server's refusals (400 bad sampling, 404 unknown model, 504 silent engine)
    raised as the REST service's `ApiError`, so its handlers answer them."""
    try:
        yield
    except EngineApiError as exc:
        raise ApiError(exc.status, exc.message, param=exc.param) from exc
    except EngineError as exc:
        raise ApiError(400, str(exc)) from exc


# --- the proxy ---------------------------------------------------------------------------------
