"""Error bodies and status codes of the engine server: OpenAI's error shape, and a 400 (not
FastAPI's 422) naming the field to fix for every invalid request.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi.exceptions import RequestValidationError

from legato.engine_adapter.openai_api import (
    ErrorInfo,
    ErrorResponse,
)

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Bad request: the message names the field to fix."},
    404: {"model": ErrorResponse, "description": "Unknown model (see GET /v1/models)."},
    503: {"model": ErrorResponse, "description": "The engine is unavailable (closed or failed)."},
    504: {"model": ErrorResponse, "description": "The engine produced no output within the timeout."},
}


def stream_responses(model: type[Any], what: str) -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "model": model,
            "description": f"{what}. With `stream: true`: server-sent events, one JSON chunk per "
            "`data:` line, ending with `data: [DONE]`.",
            "content": {"text/event-stream": {}},
        },
        **ERROR_RESPONSES,
    }


class ApiError(Exception):
    """A request the server refuses, with the HTTP status and a message saying what to fix."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


_ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 503: "ServiceUnavailableError"}


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    info = ErrorInfo(message=message, type=_ERROR_TYPES.get(status, "APIError"), param=param, code=status)
    return ErrorResponse(error=info).model_dump()


# pydantic names the member of a union that failed in `loc` ("constrained-str", "list[int]",
# "function-before[...]"): noise to a client, who knows the field only
_UNION_TAG = re.compile(r"^(?:str|int|float|bool|constrained-\w+|[\w-]+\[.*\])$")


def validation_message(exc: RequestValidationError) -> str:
    parts: list[str] = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            return f"request body is not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})"
        path = [p for p in err.get("loc", ()) if p != "body"]
        loc = ".".join(str(p) for p in path if not (isinstance(p, str) and _UNION_TAG.match(p)))
        if err.get("type") == "extra_forbidden":
            parts.append(f"{loc}: this server does not support this field; remove it (see /docs)")
            continue
        parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(dict.fromkeys(parts))
