"""`SGLangEngine`: the `Engine` protocol over an SGLang server's native `/generate` API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import anyio

from legato.engine_adapter.base import (
    Capability,
    EngineCapacity,
    EngineError,
    GenerateRequest,
    SamplingParams,
    TokenChunk,
    Tokenizer,
)
from legato.engine_adapter.http.common import (
    DEFAULT_TIMEOUT_S,
    HTTPEngineBase,
    iter_sse,
    open_stream,
    parse_prometheus,
    request_json,
    request_ok,
    request_text,
    shared_sampling_fields,
)
from legato.engine_adapter.http.prefill_metrics import PrefillFromMetrics, sglang_totals
from legato.engine_adapter.http.spec_counters import SGLangSpecTally, SpecStats

SERVER = "SGLang"
GENERATE_PATH = "/generate"

_FINISH = {"length": "length", "stop": "stop", "abort": "abort"}


class SGLangEngine(HTTPEngineBase):
    """Token-in/token-out generation on an SGLang server (or `legato engine serve`), through
    `/generate` with `input_ids`, streamed.

    Sent through: `rid` (our request id, so `abort()` can POST `/abort_request`), `session_id`
    and `routing_key` from `GenerateRequest.session_id` (SGLang's session identity and its
    routing-key scheduling/router policy: calls of one program run stay together; switch off with
    `send_session=False` for servers older than those fields), `priority` (only with
    `priority_scheduling=True`: SGLang needs `--enable-priority-scheduling`; negated, since SGLang
    runs higher values first unless started with `--schedule-low-priority-values-first`, then
    pass `low_priority_values_first=True`), `cache_salt`,
    `return_logprob`. Read back: `meta_info.cached_tokens`, `prompt_tokens`,
    `output_token_logprobs`, `finish_reason`. Both of SGLang's streaming modes are understood
    (cumulative `text`/`output_ids`, the default, and `--incremental-streaming-output`).

    What the real server lacks, so this engine does not announce it:
    no prefix query (`cached_prefix_tokens` is always 0), no pin/unpin with a TTL (SGLang's
    HiRadixCache TTL pinning, sgl-project/sglang#18941, was reverted in #21884), no eviction
    hints (radix-tree LRU), no KV export/import over HTTP, no sampling `seed` unless the server
    honours `sampling_seed`. `capacity()` reads `page_size` and `max_total_num_tokens` from
    `/get_server_info` and `sglang:token_usage` from `/metrics` (SGLang needs `--enable-metrics`;
    without it every block is reported free), and with them the time-to-first-token and
    queue-time histograms that give `prefill_costs()` (`prefill_metrics`). A finished request's
    speculation counts in `meta_info` (`spec_verify_ct` and the accepted / drafted tokens) come
    back on its last chunk and add up in `stats()` (`spec_counters`).
    """

    BASE_CAPABILITIES = frozenset({Capability.LOGPROBS, Capability.PREFILL_COSTS})

    def __init__(
        self,
        base_url: str,
        tokenizer: Tokenizer,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        *,
        model_name: str | None = None,
        send_session: bool = True,
        priority_scheduling: bool = False,
        low_priority_values_first: bool = False,
    ) -> None:
        super().__init__(
            base_url,
            tokenizer,
            api_key,
            timeout,
            model_name=model_name or f"sglang@{urlsplit(base_url).netloc}",
            priority_scheduling=priority_scheduling,
        )
        self._send_session = send_session
        self._priority_sign = 1 if low_priority_values_first else -1
        self._spec = SGLangSpecTally()
        self._prefill = PrefillFromMetrics(sglang_totals)

    def _sampling(self, sp: SamplingParams) -> dict[str, Any]:
        out: dict[str, Any] = {
            "max_new_tokens": sp.max_tokens,
            "temperature": sp.temperature,
            "top_p": sp.top_p,
            "top_k": sp.top_k if sp.top_k > 0 else -1,
            "ignore_eos": sp.ignore_eos,
        }
        out.update(shared_sampling_fields(sp))
        if sp.seed is not None:
            out["sampling_seed"] = sp.seed
        if sp.grammar is not None:
            # SGLang's constraint fields; a Lark grammar needs its llguidance grammar backend.
            out["json_schema" if sp.grammar.kind == "json_schema" else "ebnf"] = sp.grammar.text
        return out

    def _payload(self, request: GenerateRequest) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "input_ids": list(request.prompt_token_ids),
            "sampling_params": self._sampling(request.sampling),
            "rid": request.request_id,
            "stream": True,
            "return_logprob": request.sampling.logprobs,
        }
        if self._send_session and request.session_id is not None:
            payload["session_id"] = request.session_id
            payload["routing_key"] = request.session_id
        if self._priority_scheduling:
            payload["priority"] = self._priority_sign * request.priority
        if request.cache_salt is not None:
            payload["cache_salt"] = request.cache_salt
        return payload

    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenChunk]:
        rid = request.request_id
        with self._inflight.track(rid):
            seen_ids = 0
            seen_text = ""
            prompt_tokens = cached = 0
            async with open_stream(self._client, SERVER, GENERATE_PATH, self._payload(request)) as response:
                async for event in iter_sse(response, SERVER):
                    meta = event.get("meta_info") or {}
                    ids = list(event.get("output_ids") or ())
                    text = event.get("text") or ""
                    total = meta.get("completion_tokens")
                    # Default mode repeats everything so far; incremental mode sends deltas (then
                    # the running `completion_tokens` exceeds the ids in the event).
                    cumulative = (total is None or len(ids) == int(total)) and len(ids) >= seen_ids
                    new_ids = ids[seen_ids:] if cumulative else ids
                    if cumulative:
                        new_text = text[len(seen_text) :] if text.startswith(seen_text) else text
                        seen_text = text
                    else:
                        new_text = text
                        seen_text += text
                    seen_ids += len(new_ids)
                    prompt_tokens = int(meta.get("prompt_tokens") or prompt_tokens)
                    cached = int(meta.get("cached_tokens") or cached)
                    reason = _finish_reason(meta.get("finish_reason"))
                    aborted = self._inflight.is_aborted(rid) and reason is None
                    drafted, accepted = self._spec.add(meta) if reason is not None else (0, 0)
                    yield TokenChunk(
                        token_ids=tuple(new_ids),
                        text=new_text,
                        logprobs=_logprobs(meta, len(new_ids)) if request.sampling.logprobs else None,
                        finished=reason is not None or aborted,
                        finish_reason="abort" if aborted else reason,
                        prompt_tokens=prompt_tokens or len(request.prompt_token_ids),
                        cached_tokens=cached,
                        spec_drafted=drafted,
                        spec_accepted=accepted,
                    )
                    if reason is not None or aborted:
                        return
            raise EngineError(f"{SERVER} ended the /generate stream without a finish_reason")

    async def capacity(self) -> EngineCapacity:
        with anyio.fail_after(30):
            info = await request_json(self._client, SERVER, "GET", "/get_server_info")
        try:
            page = int(info.get("page_size") or 1)
            total = int(info["max_total_num_tokens"]) // page
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise EngineError(f"{SERVER} /get_server_info lacks max_total_num_tokens") from exc
        used = 0.0
        try:
            with anyio.fail_after(30):
                metrics = parse_prometheus(await request_text(self._client, SERVER, "/metrics"))
            used = max((value for _, value in metrics.get("sglang:token_usage", [])), default=0.0)
            self._prefill.observe(metrics)
        except EngineError:
            pass  # metrics are off (no --enable-metrics): report everything free
        return EngineCapacity(block_size=page, total_blocks=total, free_blocks=round(total * (1 - used)))

    def prefill_costs(self) -> tuple[float, float] | None:
        """`PrefillCostEngine`: seconds per prompt token from the server's first-token and queue
        times, as of the last `capacity()` (`prefill_metrics`); None until it has prefilled
        something since this client first looked (or without `--enable-metrics`)."""
        return self._prefill.costs()

    async def stats(self) -> SpecStats:
        """Speculative-decoding counters of the requests this engine sent (`spec_counters`)."""
        return self._spec.stats()

    async def abort(self, request_id: str) -> None:
        """Ask the server to abort `request_id`; the stream then ends with `finish_reason="abort"`."""
        if not self._inflight.abort(request_id):
            return
        with anyio.fail_after(30):
            await request_ok(self._client, SERVER, "POST", "/abort_request", {"rid": request_id})


def _finish_reason(raw: Any) -> str | None:
    if raw is None:
        return None
    kind = raw.get("type") if isinstance(raw, dict) else str(raw)
    return _FINISH.get(str(kind), str(kind))


def _logprobs(meta: dict[str, Any], n: int) -> tuple[float, ...]:
    """The last `n` entries of `output_token_logprobs` ([logprob, token_id, text] each): the new
    tokens' in cumulative mode, all of them in incremental mode."""
    entries = meta.get("output_token_logprobs") or []
    tail = entries[len(entries) - n :] if n else []
    if len(tail) != n:
        raise EngineError(f"{SERVER} returned {len(entries)} logprobs, fewer than the {n} new tokens")
    return tuple(float(entry[0]) for entry in tail)
