"""`create_engine_app`: the FastAPI app and its routes."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi_offline import FastAPIOffline

from legato.engine_adapter.base import (
    Engine,
    GenerateRequest,
    assemble_result,
    assemble_samples,
    max_model_len_of,
)
from legato.engine_adapter.openai_api import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    EngineAbortRequest,
    HealthResponse,
    ModelCard,
    ModelList,
    SGLangGenerateRequest,
    SGLangGenerateResponse,
    TokenizeRequest,
    TokenizeResponse,
    VLLMGenerateChoice,
    VLLMGenerateRequest,
    VLLMGenerateResponse,
)
from legato.engine_adapter.server.errors import (
    ERROR_RESPONSES,
    ApiError,
    error_body,
    stream_responses,
    validation_message,
)
from legato.engine_adapter.server.lifecycle import (
    ABORT_TIMEOUT_S,
    DEFAULT_CHUNK_TIMEOUT_S,
    EventStream,
    collect_or_abort,
)
from legato.engine_adapter.server.openai_calls import chat_response, completion_response, openai_request
from legato.engine_adapter.server.openai_fields import logit_bias
from legato.engine_adapter.server.service import EngineService, make_usage
from legato.engine_adapter.server.streams import (
    chat_events,
    completion_events,
    sglang_events,
    sglang_response,
    vllm_token_events,
)
from legato.engine_adapter.server.strict_json import StrictJSONRoute

# Engine counters for /metrics, from an engine with a `stats()` coroutine (the torch engine):
# (metric, stats attribute, help). vLLM's names where vLLM has the same counter.
_COUNTERS = (
    ("vllm:prompt_tokens_total", "prompt_tokens", "Prompt tokens of admitted requests (once per request)."),
    ("vllm:generation_tokens_total", "generated_tokens", "Tokens generated, all samples."),
    ("vllm:prefix_cache_hits_total", "prefix_hit_tokens", "Prompt tokens served from the prefix cache."),
    ("legato:prefill_tokens_total", "prefill_tokens", "Prompt tokens run through the model."),
    ("legato:forked_samples_total", "forked_samples", "Samples of n > 1 requests forked off a prefill."),
    ("vllm:num_preemptions_total", "preemptions", "Sequences preempted."),
    ("vllm:spec_decode_num_drafts_total", "spec_drafts", "Verify steps that checked a draft."),
    ("vllm:spec_decode_num_draft_tokens_total", "spec_draft_tokens", "Draft tokens proposed."),
    ("vllm:spec_decode_num_accepted_tokens_total", "spec_accepted_tokens", "Draft tokens accepted."),
    ("sglang:prompt_tokens_total", "prompt_tokens", "Prompt tokens of admitted requests."),
    ("sglang:cached_tokens_total", "prefix_hit_tokens", "Prompt tokens served from the prefix cache."),
)


async def engine_counters(engine: Engine, label: str) -> list[str]:
    """Prometheus lines for the engine's counters; none for engines that keep no stats."""
    stats_fn = getattr(engine, "stats", None)
    if stats_fn is None:
        return []
    stats = await stats_fn()
    lines: list[str] = []
    for name, attr, text in _COUNTERS:
        value = getattr(stats, attr, None)
        if isinstance(value, int):
            lines += [f"# HELP {name} {text}", f"# TYPE {name} counter", f"{name}{{{label}}} {value}"]
    # vLLM's prefill-phase histograms and SGLang's first-token and queue-time ones (sum and
    # count; one +Inf bucket): a scheduler reading them learns the engine's prefill cost
    # (`VLLMEngine.prefill_costs`, `SGLangEngine.prefill_costs`)
    requests = getattr(stats, "prefilled_requests", None)
    if isinstance(requests, int):
        for name, value, text in (
            (
                "vllm:request_prefill_time_seconds",
                stats.prefill_time_s,
                "Seconds from first admission to first token.",
            ),
            (
                "vllm:request_prefill_kv_computed_tokens",
                stats.prefill_computed_tokens,
                "Prompt tokens computed in the prefill phase (prefix-cache hits excluded).",
            ),
            (
                "sglang:time_to_first_token_seconds",
                stats.prefill_queue_time_s + stats.prefill_time_s,
                "Seconds from queued to first token.",
            ),
            (
                "sglang:queue_time_seconds",
                stats.prefill_queue_time_s,
                "Seconds from queued to first admission.",
            ),
        ):
            lines += [
                f"# HELP {name} {text}",
                f"# TYPE {name} histogram",
                f'{name}_bucket{{{label},le="+Inf"}} {requests}',
                f"{name}_sum{{{label}}} {value}",
                f"{name}_count{{{label}}} {requests}",
            ]
    # acceptance by draft position, under vLLM's name (its `position` label counts from 0)
    for name, attr, text in (
        ("vllm:spec_decode_num_accepted_tokens_per_pos", "spec_accepted_by_position", "Accepted there."),
        ("legato:spec_decode_num_draft_tokens_per_pos", "spec_drafted_by_position", "Drafted there."),
    ):
        counts = getattr(stats, attr, ())
        if counts:
            lines += [f"# HELP {name} {text}", f"# TYPE {name} counter"]
            lines += [f'{name}{{{label},position="{i}"}} {v}' for i, v in enumerate(counts)]
    return lines


def single_sample(n: int) -> None:
    """The native SGLang / vLLM routes answer one sample per request."""
    if n != 1:
        raise ApiError(
            400,
            f"sampling_params.n must be 1 here (got {n}); /v1/completions takes n > 1",
            "sampling_params.n",
        )


def create_engine_app(
    engine: Engine,
    *,
    max_model_len: int | None = None,
    chunk_timeout_s: float = DEFAULT_CHUNK_TIMEOUT_S,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
) -> FastAPI:
    """An ASGI app serving `engine` over OpenAI's, SGLang's and vLLM's HTTP APIs.

    `max_model_len` (prompt + output tokens) lets the server reject over-long requests with a 400
    before they reach the engine; it defaults to the engine's own (`max_model_len_of`).
    `on_shutdown` runs when the server stops (e.g. to close the engine).
    """
    limit = max_model_len if max_model_len is not None else max_model_len_of(engine)
    svc = EngineService(engine, limit, chunk_timeout_s)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if on_shutdown is not None:
                with anyio.CancelScope(shield=True), anyio.move_on_after(ABORT_TIMEOUT_S):
                    await on_shutdown()

    app = FastAPIOffline(  # /docs and /redoc from assets shipped in the package: no CDN, works offline
        title="Legato engine server",
        summary=f"{svc.model} behind OpenAI-, SGLang- and vLLM-compatible HTTP APIs.",
        version="1",
        lifespan=lifespan,
    )
    app.router.route_class = StrictJSONRoute  # bodies parsed as strict JSON on every route

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.status, exc.message, exc.param), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(400, validation_message(exc)), status_code=400)

    # --- service endpoints ------------------------------------------------------------------

    @app.get("/health", response_model=HealthResponse, summary="Liveness: 200 while the engine serves.")
    async def health() -> HealthResponse:
        return HealthResponse(model=svc.model)

    @app.get("/v1/models", response_model=ModelList, summary="The one model this server serves.")
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=svc.model, max_model_len=svc.max_model_len)])

    @app.post(
        "/tokenize",
        response_model=TokenizeResponse,
        responses=ERROR_RESPONSES,
        summary="Text or chat messages to token ids (vLLM's shape).",
    )
    async def tokenize(body: TokenizeRequest) -> TokenizeResponse:
        svc.check_model(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise ApiError(400, "send exactly one of `prompt` (text) or `messages` (chat)")
        if body.messages is not None:
            # Already validated field by field: no min-length rule on `messages` here.
            chat = ChatCompletionRequest.model_construct(
                model=svc.model, messages=body.messages, tools=body.tools
            )
            tokens = list(svc.render(svc.chat_plan(chat), body.add_generation_prompt))
        else:
            tokens = svc.tokenizer.encode(body.prompt or "")
        return TokenizeResponse(count=len(tokens), max_model_len=svc.max_model_len, tokens=list(tokens))

    @app.post(
        "/detokenize",
        response_model=DetokenizeResponse,
        responses=ERROR_RESPONSES,
        summary="Token ids to text (vLLM's shape).",
    )
    async def detokenize(body: DetokenizeRequest) -> DetokenizeResponse:
        svc.check_model(body.model)
        return DetokenizeResponse(prompt=svc.tokenizer.decode(svc.check_tokens(body.tokens, "tokens")))

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        summary="KV-cache gauges in Prometheus text, named as vLLM and SGLang name them.",
    )
    async def metrics() -> PlainTextResponse:
        cap = await engine.capacity()
        used = 0.0 if cap.total_blocks == 0 else 1.0 - cap.free_blocks / cap.total_blocks
        label = f'model_name="{svc.model}"'
        lines = [
            "# TYPE vllm:cache_config_info gauge",
            f'vllm:cache_config_info{{block_size="{cap.block_size}",'
            f'num_gpu_blocks="{cap.total_blocks}"}} 1.0',
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f"vllm:kv_cache_usage_perc{{{label}}} {used}",
            "# TYPE sglang:token_usage gauge",
            f"sglang:token_usage{{{label}}} {used}",
            *await engine_counters(engine, label),
        ]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    @app.get("/get_server_info", summary="Capacity facts in SGLang's shape (page size, token slots).")
    async def server_info() -> dict[str, Any]:
        cap = await engine.capacity()
        return {
            "model_path": svc.model,
            "served_model_name": svc.model,
            "page_size": cap.block_size,
            "max_total_num_tokens": cap.total_tokens,
            "context_length": svc.max_model_len,
        }

    # --- OpenAI ------------------------------------------------------------------------------

    @app.post(
        "/v1/completions",
        response_model=CompletionResponse,
        responses=stream_responses(CompletionResponse, "The completion"),
        summary="Text completion (OpenAI); the prompt may be text or token ids.",
    )
    async def completions(body: CompletionRequest, raw: Request) -> Response:
        svc.check_model(body.model)
        prompt = svc.prompt_ids(body.prompt)
        req = openai_request(
            svc, body, prompt, max_tokens=body.max_tokens, max_tokens_field="max_tokens", id_prefix="cmpl"
        )
        generation = await svc.start(req)
        if body.stream:
            return EventStream(completion_events(svc, body, req, generation))
        chunks = await collect_or_abort(raw, generation)
        if chunks is None:
            return Response(status_code=499)
        return completion_response(svc, body, prompt, assemble_samples(req, chunks))

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletionResponse,
        responses=stream_responses(ChatCompletionResponse, "The chat completion"),
        summary="Chat completion (OpenAI); messages go through the model's chat template.",
    )
    async def chat_completions(body: ChatCompletionRequest, raw: Request) -> Response:
        svc.check_model(body.model)
        chat = await svc.chat_prompt(body)
        req = openai_request(
            svc,
            body,
            chat.prompt,
            max_tokens=chat.max_tokens,
            max_tokens_field=chat.max_tokens_field,
            id_prefix="chatcmpl",
            grammar=chat.plan.grammar,
        )
        generation = await svc.start(req)
        if body.stream:
            return EventStream(chat_events(svc, body, req, generation, chat.plan))
        chunks = await collect_or_abort(raw, generation)
        if chunks is None:
            return Response(status_code=499)
        return chat_response(svc, body, chat.prompt, assemble_samples(req, chunks), chat.plan)

    # --- SGLang -----------------------------------------------------------------------------

    @app.post(
        "/generate",
        response_model=SGLangGenerateResponse,
        responses=stream_responses(SGLangGenerateResponse, "The generation (SGLang's shape)"),
        summary="SGLang's native generate: `input_ids` or `text` in, `output_ids` and `meta_info` out.",
    )
    async def sglang_generate(body: SGLangGenerateRequest, raw: Request) -> Response:
        if (body.text is None) == (body.input_ids is None):
            raise ApiError(400, "send exactly one of `text` or `input_ids`", "input_ids")
        prompt = (
            svc.check_tokens(body.input_ids, "input_ids")
            if body.input_ids is not None
            else tuple(svc.tokenizer.encode(body.text or ""))
        )
        sp = body.sampling_params
        single_sample(sp.n)
        sampling = svc.sampling(
            max_tokens=sp.max_new_tokens,
            max_tokens_field="sampling_params.max_new_tokens",
            prompt_len=len(prompt),
            temperature=sp.temperature,
            top_p=sp.top_p,
            top_k=sp.top_k,
            seed=sp.sampling_seed if sp.sampling_seed is not None else sp.seed,
            stop=sp.stop,
            stop_token_ids=sp.stop_token_ids,
            ignore_eos=sp.ignore_eos,
            logprobs=body.return_logprob,
            presence_penalty=sp.presence_penalty,
            frequency_penalty=sp.frequency_penalty,
            logit_bias=logit_bias(sp.logit_bias, svc.tokenizer.vocab_size),
            grammar=svc.grammar(sp.json_schema, sp.ebnf, "sampling_params"),
        )
        req = GenerateRequest(
            request_id=body.rid or uuid.uuid4().hex,
            prompt_token_ids=prompt,
            sampling=sampling,
            # SGLang runs higher values first (its default); the engine runs lower first.
            priority=-(body.priority or 0),
            cache_salt=body.cache_salt,
            session_id=body.session_id or body.routing_key,
        )
        generation = await svc.start(req)
        if body.stream:
            return EventStream(sglang_events(svc, req, generation))
        chunks = await collect_or_abort(raw, generation)
        if chunks is None:
            return Response(status_code=499)
        return JSONResponse(sglang_response(svc, req, assemble_result(req, chunks), len(prompt)).model_dump())

    @app.post(
        "/abort_request",
        responses=ERROR_RESPONSES,
        summary="Abort a request by `rid` (SGLang's shape); unknown ids are ignored.",
    )
    async def abort_request(body: EngineAbortRequest) -> dict[str, bool]:
        await engine.abort(body.rid)
        return {"success": True}

    # --- vLLM tokens in / tokens out --------------------------------------------------------

    @app.post(
        "/inference/v1/generate",
        response_model=VLLMGenerateResponse,
        responses=stream_responses(VLLMGenerateResponse, "The generation (vLLM's token API)"),
        summary="vLLM's token-in/token-out generate. `stream: true` is a Legato extension "
        "(vLLM itself answers in one piece).",
    )
    async def vllm_generate(body: VLLMGenerateRequest, raw: Request) -> Response:
        svc.check_model(body.model)
        prompt = svc.check_tokens(body.token_ids, "token_ids")
        sp = body.sampling_params
        single_sample(sp.n)
        grammar = (
            None
            if sp.structured_outputs is None
            else svc.grammar(
                sp.structured_outputs.json_,
                sp.structured_outputs.grammar,
                "sampling_params.structured_outputs",
            )
        )
        sampling = svc.vllm_sampling(sp, len(prompt), grammar)
        req = GenerateRequest(
            request_id=body.request_id or uuid.uuid4().hex,
            prompt_token_ids=prompt,
            sampling=sampling,
            priority=body.priority,
            cache_salt=body.cache_salt,
        )
        generation = await svc.start(req)
        if body.stream:
            return EventStream(vllm_token_events(svc, req, generation))
        chunks = await collect_or_abort(raw, generation)
        if chunks is None:
            return Response(status_code=499)
        result = assemble_result(req, chunks)
        choice = VLLMGenerateChoice(
            token_ids=list(result.token_ids),
            finish_reason=result.finish_reason,
            logprobs=svc.token_id_logprobs(result.token_ids, result.logprobs, result.top_logprobs),
        )
        return JSONResponse(
            VLLMGenerateResponse(
                request_id=req.request_id,
                choices=[choice],
                usage=make_usage(
                    result.prompt_tokens or len(prompt), len(result.token_ids), result.cached_tokens
                ),
            ).model_dump(exclude_none=True)
        )

    return app
