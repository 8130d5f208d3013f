"""What the vLLM and SGLang engines share: an httpx client, SSE parsing, error mapping,
abort bookkeeping, incremental detokenization and Prometheus text parsing.

Every network failure becomes an `EngineError` whose message names the server and what to
check, because the caller (Legato's runtime, a benchmark) cannot act on a raw httpx traceback.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from legato.engine_adapter.base import Capability, EngineError, SamplingParams, Tokenizer

DEFAULT_TIMEOUT_S = 120.0
CONNECT_TIMEOUT_S = 10.0


def make_client(base_url: str, api_key: str | None, timeout_s: float) -> httpx.AsyncClient:
    """An async client for one server. `timeout_s` bounds every read (the longest silence
    between two streamed chunks), connects are bounded separately and shorter."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    timeout = httpx.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s))
    return httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)


def error_message(body: bytes) -> str:
    """The human message in an error body: OpenAI's `{"error": {"message"}}`, FastAPI's
    `{"detail"}`, SGLang's `{"error": "..."}` / `{"message"}`, or the raw text."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:500] or "(empty body)"
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and "message" in err:
            return str(err["message"])
        for key in ("error", "message", "detail"):
            if data.get(key):
                return str(data[key])
    return text[:500]


def _describe(server: str, base_url: str, exc: httpx.HTTPError) -> EngineError:
    if isinstance(exc, httpx.ConnectError):
        return EngineError(f"cannot connect to {server} at {base_url}: is the server running? ({exc})")
    if isinstance(exc, httpx.TimeoutException):
        return EngineError(
            f"{server} at {base_url} timed out ({type(exc).__name__}); raise the timeout "
            "or check the server's load"
        )
    return EngineError(f"{server} at {base_url}: HTTP error {type(exc).__name__}: {exc}")


def _status_error(server: str, status: int, body: bytes, path: str) -> EngineError:
    message = error_message(body)
    if status >= 500:
        return EngineError(f"{server} failed on {path} ({status}): {message}")
    return EngineError(f"{server} rejected {path} ({status}): {message}")


@asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient, server: str, path: str, payload: dict[str, Any]
) -> AsyncIterator[httpx.Response]:
    """POST `payload` and yield the streaming response once its status is known to be 2xx.
    Connection refused, timeouts and 4xx/5xx all raise `EngineError` with a clear message."""
    try:
        async with client.stream("POST", path, json=payload) as response:
            if response.status_code >= 400:
                raise _status_error(server, response.status_code, await response.aread(), path)
            yield response
    except httpx.HTTPError as exc:
        raise _describe(server, str(client.base_url), exc) from exc


async def request_ok(
    client: httpx.AsyncClient, server: str, method: str, path: str, payload: dict[str, Any] | None = None
) -> httpx.Response:
    """One plain request that must succeed (SGLang's `/abort_request` answers with no body);
    errors mapped as in `open_stream`."""
    try:
        response = await client.request(method, path, json=payload)
    except httpx.HTTPError as exc:
        raise _describe(server, str(client.base_url), exc) from exc
    if response.status_code >= 400:
        raise _status_error(server, response.status_code, response.content, path)
    return response


async def request_json(
    client: httpx.AsyncClient, server: str, method: str, path: str, payload: dict[str, Any] | None = None
) -> Any:
    """One plain request, its JSON body returned; errors mapped as in `open_stream`."""
    response = await request_ok(client, server, method, path, payload)
    try:
        return response.json()
    except ValueError as exc:
        raise EngineError(f"{server} answered {path} with a body that is not JSON") from exc


async def request_text(client: httpx.AsyncClient, server: str, path: str) -> str:
    try:
        response = await client.get(path)
    except httpx.HTTPError as exc:
        raise _describe(server, str(client.base_url), exc) from exc
    if response.status_code >= 400:
        raise _status_error(server, response.status_code, response.content, path)
    return response.text


async def iter_sse(response: httpx.Response, server: str) -> AsyncIterator[dict[str, Any]]:
    """The JSON payloads of a server-sent event stream, up to `data: [DONE]`. An error event
    (`{"error": ...}`, as vLLM and SGLang send mid-stream) raises `EngineError`."""
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue  # blank separators, comments, `event:` lines
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            payload = json.loads(data)
        except ValueError as exc:
            raise EngineError(f"{server} sent a stream event that is not JSON: {data[:200]!r}") from exc
        if isinstance(payload, dict) and "error" in payload and payload["error"]:
            raise EngineError(f"{server} failed mid-stream: {error_message(data.encode())}")
        yield payload


@dataclass
class InFlight:
    """Requests being streamed, so `abort(request_id)` from another task can stop one: the
    stream checks its flag after every event and then closes the connection."""

    aborted: set[str] = field(default_factory=set)
    active: set[str] = field(default_factory=set)

    @contextmanager
    def track(self, request_id: str) -> Iterator[None]:
        if request_id in self.active:
            raise EngineError(f"request id {request_id!r} is already in flight; ids must be unique")
        self.active.add(request_id)
        try:
            yield
        finally:
            self.active.discard(request_id)
            self.aborted.discard(request_id)

    def abort(self, request_id: str) -> bool:
        """Flag `request_id`; False if it is not in flight."""
        if request_id not in self.active:
            return False
        self.aborted.add(request_id)
        return True

    def is_aborted(self, request_id: str) -> bool:
        return request_id in self.aborted


class IncrementalDecoder:
    """Text deltas for a growing list of token ids, for servers that return ids only.

    Decodes the whole output each time and emits what is new; a trailing U+FFFD (a multi-byte
    character cut between tokens) is held back until the next token completes it.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._emitted = 0

    def push(self, token_ids: Sequence[int], final: bool = False) -> str:
        self._ids.extend(token_ids)
        text = self._tokenizer.decode(self._ids)
        end = len(text)
        if not final:
            while end > self._emitted and text[end - 1] == "\ufffd":
                end -= 1
        delta = text[self._emitted : end]
        self._emitted = max(self._emitted, end)
        return delta


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples of a Prometheus text exposition: name -> [(labels, value), ...]."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        try:
            value = float(match["value"])
        except ValueError:
            continue
        labels = dict(_LABEL.findall(match["labels"] or ""))
        out.setdefault(match["name"], []).append((labels, value))
    return out


def shared_sampling_fields(sp: SamplingParams) -> dict[str, Any]:
    """The optional sampling fields vLLM and SGLang both name the same way (stop strings, stop
    token ids, presence / frequency penalties, logit bias), set only when they change anything."""
    out: dict[str, Any] = {}
    if sp.stop:
        out["stop"] = list(sp.stop)
    if sp.stop_token_ids:
        out["stop_token_ids"] = list(sp.stop_token_ids)
    if sp.presence_penalty:
        out["presence_penalty"] = sp.presence_penalty
    if sp.frequency_penalty:
        out["frequency_penalty"] = sp.frequency_penalty
    if sp.logit_bias:
        out["logit_bias"] = {str(t): b for t, b in sp.logit_bias}
    return out


class HTTPEngineBase:
    """The part of an HTTP engine that does not depend on the server: the client, the tokenizer,
    the requests in flight (for `abort`), the priority switch (a server must be started with
    priority scheduling to accept one), and the `Engine` protocol's plain members. No HTTP
    server Legato talks to can say what its prefix cache holds, so `cached_prefix_tokens` is 0.
    Subclasses add `generate`, `capacity` and `abort`, and name what the server can always do
    in `BASE_CAPABILITIES`."""

    BASE_CAPABILITIES: frozenset[Capability] = frozenset({Capability.LOGPROBS})

    def __init__(
        self,
        base_url: str,
        tokenizer: Tokenizer,
        api_key: str | None,
        timeout: float,
        *,
        model_name: str,
        priority_scheduling: bool,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._tokenizer = tokenizer
        self._client = make_client(base_url, api_key, timeout)
        self._model = model_name
        self._priority_scheduling = priority_scheduling
        self._inflight = InFlight()

    async def control(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Send an RL control-plane call (pause, resume, weight update) to the server as it is:
        `legato serve` forwards the frameworks' calls to the engines that have the route."""
        return await self._client.request(
            method, path, params=params, json=json, content=content, headers=headers
        )

    @property
    def model_name(self) -> str:
        return self._model

    @property
    def capabilities(self) -> frozenset[Capability]:
        caps = set(self.BASE_CAPABILITIES)
        if self._priority_scheduling:
            caps.add(Capability.PRIORITY)
        return frozenset(caps)

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    async def cached_prefix_tokens(self, token_ids: Sequence[int], cache_salt: str | None = None) -> int:
        return 0  # the server has no API to ask what its prefix cache holds

    async def close(self) -> None:
        await self._client.aclose()
