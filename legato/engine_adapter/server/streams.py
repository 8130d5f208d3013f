"""The streamed bodies of each endpoint: engine chunks to OpenAI, SGLang and vLLM event shapes."""

from __future__ import annotations

from collections.abc import AsyncIterator

from legato.engine_adapter.base import (
    GenerateRequest,
    GenerateResult,
    TokenChunk,
    assemble_result,
)
from legato.engine_adapter.chat.output import ToolStream
from legato.engine_adapter.chat.plan import ChatPlan
from legato.engine_adapter.openai_api import (
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    SGLangGenerateResponse,
    SGLangMetaInfo,
    Usage,
    VLLMGenerateChoice,
    VLLMGenerateResponse,
)
from legato.engine_adapter.server.lifecycle import Generation, guarded, sse
from legato.engine_adapter.server.service import EngineService, finite, make_usage


def completion_events(
    svc: EngineService, body: CompletionRequest, req: GenerateRequest, generation: Generation
) -> AsyncIterator[str]:
    """OpenAI's completion stream; with n > 1 the samples' chunks interleave, each choice
    carrying its `index` (the echoed prompt and prompt token ids open each sample)."""

    async def events() -> AsyncIterator[str]:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        continuous = body.stream_options is not None and body.stream_options.continuous_usage_stats
        echo = svc.tokenizer.decode(req.prompt_token_ids) if body.echo else ""
        completion = prompt_tokens = cached = 0
        spec = (0, 0)  # speculative tokens drafted / accepted so far (usage.speculative)
        offsets: dict[int, int] = {}  # sample index -> text offset so far (absent: not started)
        async for chunk in generation.chunks():
            completion += len(chunk.token_ids)
            prompt_tokens = chunk.prompt_tokens or prompt_tokens or len(req.prompt_token_ids)
            cached = chunk.cached_tokens or cached
            spec = (max(spec[0], chunk.spec_drafted), max(spec[1], chunk.spec_accepted))
            first = chunk.index not in offsets
            prefix = echo if first else ""
            offset = offsets.get(chunk.index, 0) + len(prefix)
            choice = CompletionChoice(
                index=chunk.index,
                text=prefix + chunk.text,
                finish_reason=chunk.finish_reason,
                logprobs=svc.completion_logprobs(
                    chunk.token_ids,
                    chunk.logprobs,
                    chunk.top_logprobs,
                    offset,
                    body.return_tokens_as_token_ids,
                ),
                token_ids=list(chunk.token_ids) if body.return_token_ids else None,
                prompt_token_ids=list(req.prompt_token_ids) if body.return_token_ids and first else None,
            )
            offsets[chunk.index] = offset + len(chunk.text)
            out = CompletionResponse(
                id=req.request_id,
                model=svc.model,
                choices=[choice],
                usage=make_usage(prompt_tokens, completion, cached, spec) if continuous else None,
            )
            yield sse(out.model_dump(exclude_none=True))
        if include_usage:
            tail = CompletionResponse(
                id=req.request_id,
                model=svc.model,
                choices=[],
                usage=make_usage(prompt_tokens, completion, cached, spec),
            )
            yield sse(tail.model_dump(exclude_none=True))
        yield sse("[DONE]")

    return guarded(generation, events())


def chat_events(
    svc: EngineService,
    body: ChatCompletionRequest,
    req: GenerateRequest,
    generation: Generation,
    plan: ChatPlan | None = None,
) -> AsyncIterator[str]:
    """OpenAI's chat stream: each choice opens with the assistant role (content ""), then its
    content deltas (tool calls as `tool_calls` deltas when `plan` parses them); with n > 1 the
    choices interleave, told apart by `index`."""

    async def events() -> AsyncIterator[str]:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        continuous = body.stream_options is not None and body.stream_options.continuous_usage_stats
        completion = cached = 0
        spec = (0, 0)  # speculative tokens drafted / accepted so far (usage.speculative)
        prompt_tokens = len(req.prompt_token_ids)

        def chunk_of(choice: ChatChunkChoice | None, usage: Usage | None) -> str:
            out = ChatCompletionChunk(
                id=req.request_id, model=svc.model, choices=[] if choice is None else [choice], usage=usage
            )
            return sse(out.model_dump(exclude_none=True))

        for index in range(req.sampling.n):
            yield chunk_of(ChatChunkChoice(index=index, delta=ChatDelta(role="assistant", content="")), None)
        # Each sample's tool calls are parsed out of its own text.
        tools = [ToolStream(plan) for _ in range(req.sampling.n)]
        ended: set[int] = set()
        async for chunk in generation.chunks():
            completion += len(chunk.token_ids)
            prompt_tokens = chunk.prompt_tokens or prompt_tokens
            cached = chunk.cached_tokens or cached
            spec = (max(spec[0], chunk.spec_drafted), max(spec[1], chunk.spec_accepted))
            stream = tools[chunk.index]
            content = stream.push(chunk.text)
            calls = None
            finish = chunk.finish_reason
            # A sample ends on the chunk that carries its finish reason (with n > 1, `finished`
            # marks only the end of the last sample).
            if (chunk.finish_reason is not None or chunk.finished) and chunk.index not in ended:
                ended.add(chunk.index)
                rest, deltas, finish = stream.finish(chunk.finish_reason)
                content += rest
                calls = deltas or None
            choice = ChatChunkChoice(
                index=chunk.index,
                delta=ChatDelta(content=content, tool_calls=calls),
                finish_reason=finish,
                logprobs=svc.chat_logprobs(
                    chunk.token_ids, chunk.logprobs, chunk.top_logprobs, body.return_tokens_as_token_ids
                ),
            )
            usage = make_usage(prompt_tokens, completion, cached, spec) if continuous else None
            yield chunk_of(choice, usage)
        if include_usage:
            yield chunk_of(None, make_usage(prompt_tokens, completion, cached, spec))
        yield sse("[DONE]")

    return guarded(generation, events())


def sglang_response(
    svc: EngineService, req: GenerateRequest, result: GenerateResult, prompt_len: int
) -> SGLangGenerateResponse:
    last = result.token_ids[-1] if result.token_ids else None
    logprobs: list[tuple[float, int, str | None]] | None = None
    if result.logprobs is not None:
        logprobs = [
            (finite(lp), tid, None) for lp, tid in zip(result.logprobs, result.token_ids, strict=False)
        ]
    meta = SGLangMetaInfo(
        id=req.request_id,
        prompt_tokens=result.prompt_tokens or prompt_len,
        completion_tokens=len(result.token_ids),
        cached_tokens=result.cached_tokens,
        finish_reason=svc.sglang_finish(result.finish_reason, len(result.token_ids), last, req.sampling),
        output_token_logprobs=logprobs,
        **_sglang_spec_counts(result),
    )
    return SGLangGenerateResponse(text=result.text, output_ids=list(result.token_ids), meta_info=meta)


def _sglang_spec_counts(result: GenerateResult) -> dict[str, int]:
    """SGLang's speculation fields of `meta_info`, only where the request speculated (as SGLang
    sets them only with a speculative algorithm): the accepted and drafted tokens, and
    `spec_verify_ct` as the forward passes that emitted the request's tokens (each emits the
    target's own token after any accepted draft tokens), so `completion_tokens / spec_verify_ct`
    reads as SGLang's accept length."""
    if not result.spec_drafted:
        return {}
    return {
        "spec_verify_ct": len(result.token_ids) - result.spec_accepted,
        "spec_accept_token_num": result.spec_accepted,
        "spec_draft_token_num": result.spec_drafted,
    }


def sglang_events(svc: EngineService, req: GenerateRequest, generation: Generation) -> AsyncIterator[str]:
    """SGLang's default streaming: every event carries the *cumulative* text, output_ids and
    logprobs so far (its `--incremental-streaming-output` mode is not emulated)."""

    async def events() -> AsyncIterator[str]:
        seen: list[TokenChunk] = []
        async for chunk in generation.chunks():
            seen.append(chunk)
            response = sglang_response(svc, req, assemble_result(req, seen), len(req.prompt_token_ids))
            if not chunk.finished:
                response.meta_info.finish_reason = None
            yield sse(response.model_dump())
        yield sse("[DONE]")

    return guarded(generation, events())


def vllm_token_events(svc: EngineService, req: GenerateRequest, generation: Generation) -> AsyncIterator[str]:
    async def events() -> AsyncIterator[str]:
        completion = cached = 0
        prompt_tokens = len(req.prompt_token_ids)
        async for chunk in generation.chunks():
            completion += len(chunk.token_ids)
            prompt_tokens = chunk.prompt_tokens or prompt_tokens
            cached = chunk.cached_tokens or cached
            choice = VLLMGenerateChoice(
                token_ids=list(chunk.token_ids),
                finish_reason=chunk.finish_reason if chunk.finished else None,
                logprobs=svc.token_id_logprobs(chunk.token_ids, chunk.logprobs, chunk.top_logprobs),
            )
            out = VLLMGenerateResponse(
                request_id=req.request_id,
                choices=[choice],
                usage=make_usage(
                    prompt_tokens, completion, cached, (chunk.spec_drafted, chunk.spec_accepted)
                ),
            )
            yield sse(out.model_dump(exclude_none=True))
        yield sse("[DONE]")

    return guarded(generation, events())
