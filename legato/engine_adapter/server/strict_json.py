"""Request bodies parsed as strict JSON on every route (`StrictJSONRoute`), engine server and REST
service alike.

Python's `json` accepts what JSON (RFC 8259) does not: `NaN`, `Infinity` and `-Infinity`
literals, numbers that overflow to infinity (`1e400`), and `\\ud800`-style escapes of lone
surrogates, which make a `str` that cannot be encoded to UTF-8 and so fails later, far from the
request (a 500 when the run is stored or the prompt tokenized). Here such a body is refused while
it is parsed, with a message naming where; FastAPI turns the `JSONDecodeError` into its usual
validation error (422 on the REST service, 400 on OpenAI-shaped routes). Bodies must be UTF-8.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

# A \\u escape of a surrogate (D800-DFFF). Paired ones are valid, so a hit only triggers the walk.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


class _Refused(ValueError):
    pass


def _constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number; send a finite number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"number {text[:40]} overflows a 64-bit float; send a finite number")
    return value


def _lone_surrogate(value: Any) -> str | None:
    """The path of the first string (key or value) holding a lone surrogate, if any."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:  # the path may hold it too: escape it for the message
                    return (path or "(the body)").encode("utf-8", "backslashreplace").decode("utf-8")
        elif isinstance(item, dict):
            for key, child in item.items():
                where = f"{path}.{key}" if path else str(key)
                stack.append((key, where))
                stack.append((child, where))
        elif isinstance(item, list):
            stack.extend((child, f"{path}.{i}" if path else str(i)) for i, child in enumerate(item))
    return None


def strict_loads(body: bytes | str) -> Any:
    """Parse `body` as RFC 8259 JSON; raise `json.JSONDecodeError` saying what is wrong and where."""
    if isinstance(body, bytes):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise json.JSONDecodeError(
                "the body is not UTF-8 (a lone surrogate or an invalid byte sequence)", "", exc.start
            ) from None
    else:
        text = body
    try:
        value = json.loads(text, parse_constant=_constant, parse_float=_finite)
    except json.JSONDecodeError:
        raise
    except _Refused as exc:
        raise json.JSONDecodeError(str(exc), text, 0) from None
    except RecursionError:
        raise json.JSONDecodeError("the body nests too deeply", text, 0) from None
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        raise json.JSONDecodeError(str(exc), text, 0) from None
    if "\\u" in text and _SURROGATE_ESCAPE.search(text):
        where = _lone_surrogate(value)
        if where is not None:
            raise json.JSONDecodeError(
                f"{where}: a string holds a lone surrogate (\\ud800-\\udfff without its pair); "
                "strings must be valid Unicode",
                text,
                0,
            )
    return value


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = strict_loads(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    """An `APIRoute` whose handler reads JSON bodies with `strict_loads`. Every router of both
    apps uses it (`route_class=StrictJSONRoute`); a test checks that no route is left out."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            # every query parameter here is a scalar: a repeated one is refused, not last-wins
            query = request.query_params
            repeated = sorted({key for key in query if len(query.getlist(key)) > 1})
            if repeated:
                raise RequestValidationError(
                    [
                        {
                            "type": "value_error",
                            "loc": ("query", key),
                            "msg": "given more than once; send it once",
                            "input": query.getlist(key),
                        }
                        for key in repeated
                    ]
                )
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict_handler
