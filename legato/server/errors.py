"""The REST service's error shape and exception handlers.

Every refusal is `{"error": {"type", "message", "param", "code"}}` (OpenAI's shape, which the
engine server and the OpenAI-compatible proxy use too, so one client parser handles all three)
with a message that says what to fix. Handlers are installed by `install_error_handlers`, so no
bad request ever surfaces as a 500: request validation becomes 422, `ApiError(status, ...)`
becomes its status (401 carries `WWW-Authenticate`, 429 carries `Retry-After`).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from legato.engine_adapter.openai_api import ErrorInfo, ErrorResponse
from legato.engine_adapter.server.errors import validation_message

log = logging.getLogger(__name__)

ERROR_TYPES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    422: "invalid_request",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(Exception):
    """A refused request: HTTP status plus a message saying what to fix.

    `retry_after_s` (429/503) becomes a `Retry-After` header (whole seconds, at least 1);
    401 responses always carry `WWW-Authenticate: Bearer`.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        retry_after_s: float | None = None,
        type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.retry_after_s = retry_after_s
        self.type = type or ERROR_TYPES.get(status, "error")

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="legato"'
        if self.retry_after_s is not None:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        return headers


def error_body(
    status: int, message: str, param: str | None = None, type: str | None = None
) -> dict[str, Any]:
    info = ErrorInfo(message=message, type=type or ERROR_TYPES.get(status, "error"), param=param, code=status)
    return ErrorResponse(error=info).model_dump()


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(
        error_body(exc.status, exc.message, exc.param, exc.type),
        status_code=exc.status,
        headers=exc.headers(),
    )


def _doc(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


RESPONSES: dict[int | str, dict[str, Any]] = {
    401: _doc("Missing or wrong API key (send `Authorization: Bearer <key>`)."),
    404: _doc("No such resource for this tenant (another tenant's resources are 404 too)."),
    413: _doc("Request body larger than the server's limit."),
    422: _doc("Invalid request or program: the message names what to fix."),
    429: _doc("A tenant quota is exhausted; retry after `Retry-After` seconds."),
}
"""Error responses shared by every authenticated endpoint (for `responses=` in route decorators)."""


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`RESPONSES` plus extra documented codes (409, 503, ...)."""
    extra = {
        400: _doc(
            "Invalid request in the frameworks' own convention (vLLM, SGLang): the message names the field."
        ),
        403: _doc("The key is valid but may not do this (control-plane endpoints need an admin key)."),
        409: _doc("The request conflicts with the resource's current state."),
        503: _doc("The service is starting or shutting down."),
    }
    return {**RESPONSES, **{c: extra[c] for c in codes if c in extra}}


OPENAI_PATHS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        # the RL frameworks' routes: vLLM and SGLang answer invalid bodies with 400 too
        "/inference/v1/generate",
        "/generate",
        "/update_weights_from_disk",
        "/pause_generation",
        "/abort_request",
        "/tokenize",
        "/detokenize",
    }
)


def install_error_handlers(app: FastAPI) -> None:
    """JSON error bodies for `ApiError`, validation errors, Starlette HTTP errors and the rest."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        if exc.status == 429:  # per-tenant refusals, whichever quota said no (/ui tenants panel)
            tenant = getattr(request.state, "tenant", None)
            quotas = getattr(getattr(request.app.state, "legato", None), "quotas", None)
            if tenant is not None and quotas is not None:
                quotas.rejected[tenant.id] += 1
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # The OpenAI-compatible routes answer invalid bodies as OpenAI does (400); the rest 422.
        status = 400 if request.url.path in OPENAI_PATHS else 422
        return error_response(ApiError(status, validation_message(exc)))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = "no such endpoint; see /docs for the API"
        elif exc.status_code == 405:
            message = "method not allowed on this endpoint; see /docs for the API"
        err = ApiError(exc.status_code, message)
        response = error_response(err)
        for key, value in (exc.headers or {}).items():
            response.headers[key] = value
        return response

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(ApiError(500, f"internal error ({type(exc).__name__}); see the server log"))
