"""`VLLMEngine`: the `Engine` protocol over a vLLM server's HTTP API."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any, Literal

import anyio
import httpx

from legato.engine_adapter.base import (
    Capability,
    EngineCapacity,
    EngineError,
    GenerateRequest,
    SamplingParams,
    TokenChunk,
    Tokenizer,
    TopLogprobs,
)
from legato.engine_adapter.http.common import (
    DEFAULT_TIMEOUT_S,
    HTTPEngineBase,
    IncrementalDecoder,
    iter_sse,
    open_stream,
    parse_prometheus,
    request_json,
    request_text,
    shared_sampling_fields,
)
from legato.engine_adapter.http.prefill_metrics import PrefillFromMetrics
from legato.engine_adapter.http.spec_counters import SpecStats, vllm_spec_stats

SERVER = "vLLM"
TOKENS_PATH = "/inference/v1/generate"
COMPLETIONS_PATH = "/v1/completions"

Endpoint = Literal["auto", "completions", "generate"]


class VLLMEngine(HTTPEngineBase):
    """Token-in/token-out generation on a vLLM server (or anything speaking its API, such as
    `legato engine serve`).

    Two routes, chosen once per engine (`endpoint="auto"` probes the server's OpenAPI document):

    * `/inference/v1/generate` (vLLM's tokens-in/tokens-out API) when the server has it: no
      detokenization round trip; text deltas are decoded locally with `tokenizer`. vLLM answers
      it in one piece (no streaming), so the whole output arrives as one chunk there, and
      `timeout` (the longest silence on a read) must cover the whole generation.
    * `/v1/completions` with a token-id prompt, streamed, with `return_token_ids` (vLLM >= 0.10.2)
      and `stream_options.continuous_usage_stats` so prompt and cached token counts come early.

    Sent through: `priority` (only with `priority_scheduling=True`: vLLM rejects a non-zero
    priority unless started with `--scheduling-policy priority`), `cache_salt`, `request_id`,
    logprobs and their alternatives, penalties and `logit_bias`, and `n`. A request with `n > 1` or
    `top_logprobs` always takes `/v1/completions` (choices carry their `index`; alternatives come
    back as `token_id:N` with vLLM's `return_tokens_as_token_ids`). Read back:
    `usage.prompt_tokens_details.cached_tokens` (vLLM fills it only with
    `--enable-prompt-tokens-details`; 0 otherwise).

    What the real server lacks, so this engine does not announce it:
    no prefix query (`cached_prefix_tokens` is always 0: vLLM has no API to ask), no pin/unpin,
    no eviction hints (vLLM's prefix cache is plain LRU), no KV export/import over HTTP, no
    session routing (`session_id` is not sent; route upstream), no abort endpoint: `abort()`
    closes the connection, which vLLM turns into an abort; it takes effect at the next streamed
    chunk (on the token route, when the single response arrives). `capacity()` reads
    `vllm:cache_config_info` and `vllm:kv_cache_usage_perc` from `/metrics`, and with them the
    prefill-phase metrics that give `prefill_costs()` (`prefill_metrics`); `stats()` reads its
    speculative-decoding counters (`spec_counters`).
    """

    BASE_CAPABILITIES = frozenset(
        {Capability.LOGPROBS, Capability.TOP_LOGPROBS, Capability.PARALLEL_SAMPLING, Capability.PREFILL_COSTS}
    )

    def __init__(
        self,
        base_url: str,
        model: str,
        tokenizer: Tokenizer,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        *,
        endpoint: Endpoint = "auto",
        priority_scheduling: bool = False,
    ) -> None:
        super().__init__(
            base_url, tokenizer, api_key, timeout, model_name=model, priority_scheduling=priority_scheduling
        )
        self._endpoint: Endpoint = endpoint
        self._probe_lock = anyio.Lock()
        self._prefill = PrefillFromMetrics()

    async def endpoint(self) -> Literal["completions", "generate"]:
        """The route in use, probing `/openapi.json` once if it was left to "auto"."""
        async with self._probe_lock:
            if self._endpoint == "auto":
                try:
                    with anyio.fail_after(15):
                        spec = await request_json(self._client, SERVER, "GET", "/openapi.json")
                    has_tokens = TOKENS_PATH in (spec.get("paths") or {})
                except (EngineError, TimeoutError, AttributeError):
                    has_tokens = False  # no OpenAPI document: the completions route always exists
                self._endpoint = "generate" if has_tokens else "completions"
            return self._endpoint

    def _sampling(self, sp: SamplingParams) -> dict[str, Any]:
        out: dict[str, Any] = {
            "max_tokens": sp.max_tokens,
            "temperature": sp.temperature,
            "top_p": sp.top_p,
            "ignore_eos": sp.ignore_eos,
        }
        if sp.top_k > 0:
            out["top_k"] = sp.top_k
        if sp.seed is not None:
            out["seed"] = sp.seed
        out.update(shared_sampling_fields(sp))
        if sp.logprobs:
            out["logprobs"] = sp.top_logprobs  # the sampled token's logprob, and alternatives
        if sp.n > 1:
            out["n"] = sp.n
        if sp.grammar is not None:
            # vLLM's structured outputs; a Lark grammar with %json needs its `guidance` backend.
            if sp.grammar.kind == "json_schema":
                out["structured_outputs"] = {"json": json.loads(sp.grammar.text)}
            else:
                out["structured_outputs"] = {"grammar": sp.grammar.text}
        return out

    def _extras(self, request: GenerateRequest) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self._model, "request_id": request.request_id}
        if request.cache_salt is not None:
            out["cache_salt"] = request.cache_salt
        if self._priority_scheduling:
            out["priority"] = request.priority
        return out

    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenChunk]:
        with self._inflight.track(request.request_id):
            sp = request.sampling
            if await self.endpoint() == "generate" and sp.n == 1 and not sp.top_logprobs:
                stream = self._generate_tokens(request)
            else:
                stream = self._generate_completions(request)
            async for chunk in stream:
                yield chunk
                if chunk.finished:
                    return

    async def _generate_tokens(self, request: GenerateRequest) -> AsyncIterator[TokenChunk]:
        payload = {
            **self._extras(request),
            "token_ids": list(request.prompt_token_ids),
            "sampling_params": self._sampling(request.sampling),
            "stream": True,  # honoured by `legato engine serve`; vLLM answers in one piece
        }
        decoder = IncrementalDecoder(self._tokenizer)
        async with open_stream(self._client, SERVER, TOKENS_PATH, payload) as response:
            if response.headers.get("content-type", "").startswith("text/event-stream"):
                events: AsyncIterator[dict[str, Any]] = iter_sse(response, SERVER)
            else:
                events = _one(await _json_body(response))
            prompt_tokens = cached = 0
            async for event in events:
                if self._inflight.is_aborted(request.request_id):
                    yield _aborted(prompt_tokens, cached)
                    return
                choices = event.get("choices") or []
                usage = event.get("usage") or {}
                prompt_tokens = usage.get("prompt_tokens") or prompt_tokens
                cached = _cached(usage) or cached
                if not choices:
                    continue
                choice = choices[0]
                ids = tuple(choice.get("token_ids") or ())
                reason = choice.get("finish_reason")
                text = decoder.push(ids, final=reason is not None)
                yield TokenChunk(
                    token_ids=ids,
                    text=text,
                    logprobs=_content_logprobs(choice, len(ids)) if request.sampling.logprobs else None,
                    finished=reason is not None,
                    finish_reason=reason,
                    prompt_tokens=prompt_tokens or len(request.prompt_token_ids),
                    cached_tokens=cached,
                )
                if reason is not None:
                    return
        raise EngineError(f"{SERVER} ended {TOKENS_PATH} without a finish_reason")

    async def _generate_completions(self, request: GenerateRequest) -> AsyncIterator[TokenChunk]:
        payload = {
            **self._extras(request),
            **self._sampling(request.sampling),
            "prompt": list(request.prompt_token_ids),
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
            "return_token_ids": True,
        }
        top_k = request.sampling.top_logprobs if request.sampling.logprobs else 0
        if top_k:
            payload["return_tokens_as_token_ids"] = True  # alternatives named `token_id:N`
        pending: TokenChunk | None = None  # the finishing chunk waits for the final usage
        unfinished = set(range(request.sampling.n))  # samples still running
        prompt_tokens = cached = 0
        async with open_stream(self._client, SERVER, COMPLETIONS_PATH, payload) as response:
            async for event in iter_sse(response, SERVER):
                if self._inflight.is_aborted(request.request_id):
                    yield _aborted(prompt_tokens, cached)
                    return
                usage = event.get("usage") or {}
                prompt_tokens = usage.get("prompt_tokens") or prompt_tokens
                cached = _cached(usage) or cached
                for choice in event.get("choices") or []:
                    ids = choice.get("token_ids")
                    text = choice.get("text") or ""
                    if ids is None:
                        if not text:
                            continue
                        raise EngineError(
                            f"{SERVER} returned text without token ids: it needs `return_token_ids` "
                            "(vLLM >= 0.10.2)"
                        )
                    logprobs = None
                    if request.sampling.logprobs:
                        raw = (choice.get("logprobs") or {}).get("token_logprobs") or []
                        logprobs = tuple(float(x) if x is not None else 0.0 for x in raw[: len(ids)])
                    top = _top_logprobs(choice, len(ids), top_k) if top_k else None
                    reason = choice.get("finish_reason")
                    index = int(choice.get("index") or 0)
                    if index not in range(request.sampling.n):
                        raise EngineError(f"{SERVER} returned choice {index} for n={request.sampling.n}")
                    if reason is not None:
                        unfinished.discard(index)
                    chunk = TokenChunk(
                        token_ids=tuple(ids),
                        text=text,
                        logprobs=logprobs,
                        finished=reason is not None,
                        finish_reason=reason,
                        prompt_tokens=prompt_tokens,
                        cached_tokens=cached,
                        index=index,
                        top_logprobs=top,
                    )
                    if reason is None:
                        yield chunk
                    elif unfinished:  # another sample is still running: not the stream's end
                        yield dataclasses.replace(chunk, finished=False)
                    else:
                        pending = chunk
        if pending is None:
            raise EngineError(f"{SERVER} ended the completion stream without a finish_reason")
        yield TokenChunk(
            token_ids=pending.token_ids,
            text=pending.text,
            logprobs=pending.logprobs,
            finished=True,
            finish_reason=pending.finish_reason,
            prompt_tokens=prompt_tokens or len(request.prompt_token_ids),
            cached_tokens=cached,
            index=pending.index,
            top_logprobs=pending.top_logprobs,
        )

    async def capacity(self) -> EngineCapacity:
        with anyio.fail_after(30):
            metrics = parse_prometheus(await request_text(self._client, SERVER, "/metrics"))
        self._prefill.observe(metrics)
        info = metrics.get("vllm:cache_config_info")
        if not info:
            raise EngineError(f"{SERVER} at {self._base_url} reports no vllm:cache_config_info in /metrics")
        labels = info[0][0]
        try:
            block_size = int(labels["block_size"])
            total = int(labels["num_gpu_blocks"])
        except (KeyError, ValueError) as exc:
            raise EngineError(
                f"{SERVER} /metrics: vllm:cache_config_info lacks block_size/num_gpu_blocks"
            ) from exc
        usage = metrics.get("vllm:kv_cache_usage_perc") or metrics.get("vllm:gpu_cache_usage_perc") or []
        used = max((value for _, value in usage), default=0.0)
        return EngineCapacity(
            block_size=block_size, total_blocks=total, free_blocks=round(total * (1 - used))
        )

    def prefill_costs(self) -> tuple[float, float] | None:
        """`PrefillCostEngine`: seconds per prompt token from the server's prefill-phase metrics,
        as of the last `capacity()` (`prefill_metrics`; no separate context term); None until it
        has prefilled something since this client first looked."""
        return self._prefill.costs()

    async def stats(self) -> SpecStats:
        """The server's speculative-decoding counters (`spec_counters`; all 0 without speculation)."""
        with anyio.fail_after(30):
            metrics = parse_prometheus(await request_text(self._client, SERVER, "/metrics"))
        return vllm_spec_stats(metrics)

    async def abort(self, request_id: str) -> None:
        self._inflight.abort(request_id)


def _cached(usage: dict[str, Any]) -> int:
    details = usage.get("prompt_tokens_details") or {}
    return int(details.get("cached_tokens") or 0)


def _top_logprobs(choice: dict[str, Any], n: int, k: int) -> tuple[TopLogprobs, ...]:
    """The `k` best alternatives per token from a completion choice's `top_logprobs` dicts (keys
    `token_id:N`, as `return_tokens_as_token_ids` asks; vLLM adds the sampled token when it is
    not among them, so the dict is sorted and cut to `k`)."""
    rows = (choice.get("logprobs") or {}).get("top_logprobs") or []
    if len(rows) < n:
        raise EngineError(f"{SERVER} returned {len(rows)} top_logprobs entries for {n} tokens")
    out: list[TopLogprobs] = []
    for row in rows[:n]:
        pairs: list[tuple[int, float]] = []
        for key, value in (row or {}).items():
            if not str(key).startswith("token_id:"):
                raise EngineError(f"{SERVER} named a top_logprobs token {key!r}, not token_id:N")
            pairs.append((int(str(key)[len("token_id:") :]), float(value)))
        out.append(tuple(sorted(pairs, key=lambda p: -p[1])[:k]))
    return tuple(out)


def _content_logprobs(choice: dict[str, Any], n: int) -> tuple[float, ...]:
    content = (choice.get("logprobs") or {}).get("content") or []
    values = tuple(float(entry.get("logprob", 0.0)) for entry in content[:n])
    if len(values) != n:
        raise EngineError(f"{SERVER} returned {len(values)} logprobs for {n} tokens")
    return values


def _aborted(prompt_tokens: int, cached: int) -> TokenChunk:
    return TokenChunk(
        token_ids=(), finished=True, finish_reason="abort", prompt_tokens=prompt_tokens, cached_tokens=cached
    )


async def _json_body(response: httpx.Response) -> dict[str, Any]:
    body = await response.aread()
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise EngineError(f"{SERVER} answered {TOKENS_PATH} with a body that is not JSON") from exc
    if not isinstance(data, dict):
        raise EngineError(f"{SERVER} answered {TOKENS_PATH} with {type(data).__name__}, not an object")
    return data


async def _one(event: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    yield event
