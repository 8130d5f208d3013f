"""OpenAI completions and chat completions: the engine request each body becomes (its fields
checked by `openai_fields`, plus the output grammar of structured output), and the non-streamed
answers, one choice per sample (a chat choice's tool calls parsed out of its own text). Shared by
the engine server and Legato's proxy."""

from __future__ import annotations

import dataclasses

from fastapi.responses import JSONResponse

from legato.engine_adapter.base import GenerateRequest, GenerateResult, GrammarSpec, SpeculativeParams
from legato.engine_adapter.chat.output import chat_message
from legato.engine_adapter.chat.plan import ChatPlan
from legato.engine_adapter.openai_api import (
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    SamplingFields,
    Usage,
    new_id,
)
from legato.engine_adapter.server.openai_fields import (
    check_fields,
    logit_bias,
    samples_to_draw,
    wants_logprobs,
)
from legato.engine_adapter.server.service import EngineService, make_usage


def best_samples(body: CompletionRequest, results: list[GenerateResult]) -> list[GenerateResult]:
    """The `n` samples with the highest total logprob when `best_of` drew more (OpenAI's rule),
    re-indexed; the logprobs drawn only for the ranking are dropped."""
    if len(results) <= body.n:
        return results
    ranked = sorted(results, key=lambda r: sum(r.logprobs or ()), reverse=True)[: body.n]
    keep = body.logprobs is not None
    return [
        dataclasses.replace(r, index=i, logprobs=r.logprobs if keep else None) for i, r in enumerate(ranked)
    ]


def completion_response(
    svc: EngineService, body: CompletionRequest, prompt: tuple[int, ...], results: list[GenerateResult]
) -> JSONResponse:
    """The non-streaming OpenAI completion answer for a finished generation (one choice per sample)."""
    echo = svc.tokenizer.decode(prompt) if body.echo else ""
    choices = [
        CompletionChoice(
            index=r.index,
            text=echo + r.text,
            finish_reason=r.finish_reason,
            logprobs=svc.completion_logprobs(
                r.token_ids, r.logprobs, r.top_logprobs, len(echo), body.return_tokens_as_token_ids
            ),
            token_ids=list(r.token_ids) if body.return_token_ids else None,
            prompt_token_ids=list(prompt) if body.return_token_ids else None,
        )
        for r in best_samples(body, results)
    ]
    first = results[0]
    usage = _usage(prompt, results)
    out = CompletionResponse(id=first.request_id, model=svc.model, choices=choices, usage=usage)
    return JSONResponse(out.model_dump(exclude_none=True))


def _usage(prompt: tuple[int, ...], results: list[GenerateResult]) -> Usage:
    """One prompt (prefilled once for all samples) and every sample's output tokens."""
    first = results[0]
    return make_usage(
        first.prompt_tokens or len(prompt),
        sum(len(r.token_ids) for r in results),
        first.cached_tokens,
        (sum(r.spec_drafted for r in results), sum(r.spec_accepted for r in results)),
    )


def chat_response(
    svc: EngineService,
    body: ChatCompletionRequest,
    prompt: tuple[int, ...],
    results: list[GenerateResult],
    plan: ChatPlan | None = None,
) -> JSONResponse:
    """The non-streaming OpenAI chat completion answer for a finished generation: one choice per
    sample, each with the tool calls `plan` says to parse out of its own text."""
    choices = []
    for r in results:
        message, finish_reason = chat_message(plan, r.text, r.finish_reason)
        choices.append(
            ChatChoice(
                index=r.index,
                message=message,
                finish_reason=finish_reason,
                logprobs=svc.chat_logprobs(
                    r.token_ids, r.logprobs, r.top_logprobs, body.return_tokens_as_token_ids
                ),
            )
        )
    first = results[0]
    usage = _usage(prompt, results)
    out = ChatCompletionResponse(id=first.request_id, model=svc.model, choices=choices, usage=usage)
    return JSONResponse(out.model_dump(exclude_none=True))


def openai_request(
    svc: EngineService,
    body: SamplingFields,
    prompt: tuple[int, ...],
    *,
    max_tokens: int | None,
    max_tokens_field: str,
    id_prefix: str,
    client_routing: bool = True,
    grammar: GrammarSpec | None = None,
) -> GenerateRequest:
    """The engine request of an OpenAI completion or chat body: the sampling fields and vLLM
    extras the two share, checked the same way (`openai_fields`: every field honoured or a 400
    naming it). `client_routing=False` (Legato's proxy) refuses the client's `request_id`,
    `priority` and `cache_salt`: there the scheduler decides priority and derives the salt from
    the authenticated tenant. `grammar` constrains every sample's output (structured output)."""
    check_fields(body, svc.engine, client_routing=client_routing)
    so = body.structured_outputs if isinstance(body, CompletionRequest) else None
    if so is not None:  # vLLM's extra on completions (chat's grammar comes from its plan)
        grammar = svc.grammar(so.json_, so.grammar, "structured_outputs")
    logprobs, top_logprobs = wants_logprobs(body)
    sampling = svc.sampling(
        max_tokens=max_tokens,
        max_tokens_field=max_tokens_field,
        prompt_len=len(prompt),
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        seed=body.seed,
        stop=body.stop,
        stop_token_ids=body.stop_token_ids,
        ignore_eos=body.ignore_eos,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        n=samples_to_draw(body),
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        logit_bias=logit_bias(body.logit_bias, svc.tokenizer.vocab_size),
        grammar=grammar,
    )
    if body.speculative is not None:
        opts = body.speculative
        spec = SpeculativeParams(opts.drafter, opts.num_speculative_tokens)
        sampling = dataclasses.replace(sampling, speculative=spec)
    if not client_routing:
        return GenerateRequest(request_id=new_id(id_prefix), prompt_token_ids=prompt, sampling=sampling)
    return GenerateRequest(
        request_id=body.request_id or new_id(id_prefix),
        prompt_token_ids=prompt,
        sampling=sampling,
        priority=body.priority,
        cache_salt=body.cache_salt,
    )
