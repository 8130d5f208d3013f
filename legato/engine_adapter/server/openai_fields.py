"""The OpenAI request fields that need more than a type check: each one is honoured, or refused
with a 400 that names it (nothing a client sends is silently dropped; undeclared fields are
refused by the models themselves, see `openai_api.OpenAIRequest`).

Honoured by the sampler or the server: `n`, `best_of`, `logprobs`, `top_logprobs`,
`presence_penalty`, `frequency_penalty`, `logit_bias`, `seed`, `stop`, `max_tokens`,
`max_completion_tokens`, `temperature`, `top_p`, `stream`, `stream_options`, `echo`, `user`
(logged), `service_tier` (`auto`/`default`: the one tier served), and vLLM's extras (`top_k`,
`stop_token_ids`, `ignore_eos`, `return_token_ids`, `return_tokens_as_token_ids`,
`add_generation_prompt`; `priority`, `cache_salt`, `request_id` on the engine server).
Honoured by the chat plan (`chat.plan`): `tools`, `tool_choice`, `parallel_tool_calls`,
`response_format` (`text`, `json_object`, `json_schema`; grammar-enforced), and messages'
`name`, `tool_calls` and `tool_call_id` (through the chat template); completions' vLLM extra
`structured_outputs` (`json`, `grammar`). The tool models refuse undeclared fields too.

Refused when they ask for something this server does not do: `store: true`, `metadata`,
`suffix`, `echo` with `logprobs`, `best_of` with `stream`, `top_logprobs` without `logprobs`,
`stream_options` without `stream`, `n > 1` or `top_logprobs` on an engine without the capability,
an unknown `tool_choice` function, a schema that cannot be compiled, an unsupported
`response_format` type,
and on Legato's proxy the vLLM routing extras it decides itself (`priority`, `cache_salt`,
`request_id`).
"""

from __future__ import annotations

import logging

from legato.engine_adapter.base import Capability, Engine
from legato.engine_adapter.fields import LOGIT_BIAS_LIMIT
from legato.engine_adapter.openai_api import (
    MAX_N,
    MAX_TOP_LOGPROBS,
    ChatCompletionRequest,
    CompletionRequest,
    SamplingFields,
)
from legato.engine_adapter.server.errors import ApiError

log = logging.getLogger(__name__)


def samples_to_draw(body: SamplingFields) -> int:
    """How many samples the engine draws: `best_of` when given (completions), else `n`."""
    best_of = body.best_of if isinstance(body, CompletionRequest) else None
    return best_of if best_of is not None else body.n


def wants_logprobs(body: SamplingFields) -> tuple[bool, int]:
    """(logprobs of the sampled tokens, how many alternatives per token) the engine must return;
    `best_of` needs the logprobs to rank its samples even when the client did not ask for them."""
    if isinstance(body, ChatCompletionRequest):
        return body.logprobs, (body.top_logprobs or 0) if body.logprobs else 0
    if isinstance(body, CompletionRequest):
        ranked = samples_to_draw(body) > body.n
        return body.logprobs is not None or ranked, body.logprobs or 0
    return False, 0


def check_fields(body: SamplingFields, engine: Engine, *, client_routing: bool) -> None:
    """Raise a 400 naming the first field of `body` that cannot be honoured here."""
    caps = engine.capabilities
    draw = samples_to_draw(body)
    if isinstance(body, CompletionRequest):
        _check_completion(body, draw)
    if draw > 1 and Capability.PARALLEL_SAMPLING not in caps:
        field = "n" if draw == body.n else "best_of"
        raise ApiError(
            400,
            f"{field}={draw}: the engine behind this server ({engine.model_name}) draws one sample per "
            "request; send separate requests",
            field,
        )
    if isinstance(body, ChatCompletionRequest) and body.top_logprobs and not body.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true", "top_logprobs")
    if wants_logprobs(body)[1] and Capability.TOP_LOGPROBS not in caps:
        raise ApiError(
            400,
            "this engine returns the sampled tokens' logprobs only: set top_logprobs to 0",
            "top_logprobs",
        )
    if body.speculative is not None and Capability.SPECULATIVE not in caps:
        raise ApiError(
            400,
            f"speculative: the engine behind this server ({engine.model_name}) does not take "
            "per-request speculative decoding; omit it",
            "speculative",
        )
    if body.stream_options is not None and not body.stream:
        raise ApiError(400, "stream_options only applies with stream: true", "stream_options")
    if body.store:
        raise ApiError(
            400, "store: true is not supported (this server keeps no completions); omit it", "store"
        )
    if body.metadata:
        raise ApiError(
            400,
            "metadata is only kept with store: true, which this server does not offer; omit it",
            "metadata",
        )
    if not client_routing:
        for name, default in (("priority", 0), ("cache_salt", None), ("request_id", None)):
            if getattr(body, name) != default:
                raise ApiError(
                    400,
                    f"{name} is decided by Legato here (scheduler priority, tenant cache salt, call id); "
                    "omit it",
                    name,
                )
    if body.user:
        log.info("OpenAI request from end user %r", body.user)


def _check_completion(body: CompletionRequest, draw: int) -> None:
    if body.suffix:
        raise ApiError(
            400, "suffix (insertion) is not supported; send the text before it as the prompt", "suffix"
        )
    if body.echo and body.logprobs is not None:
        raise ApiError(
            400, "echo with logprobs needs the prompt's logprobs, which this server does not compute", "echo"
        )
    if body.best_of is not None:
        if not body.n <= body.best_of <= MAX_N:
            raise ApiError(
                400, f"best_of must be between n ({body.n}) and {MAX_N} (got {body.best_of})", "best_of"
            )
        if body.stream and draw > body.n:
            raise ApiError(
                400, "best_of > n cannot be streamed (the best samples are known at the end)", "best_of"
            )


def top_logprobs_of(engine: Engine, k: int, field: str) -> int:
    """`k` alternatives per token, checked against the engine's capability and OpenAI's limit."""
    if k > MAX_TOP_LOGPROBS:
        raise ApiError(400, f"{field} must be at most {MAX_TOP_LOGPROBS} (got {k})", field)
    if k and Capability.TOP_LOGPROBS not in engine.capabilities:
        raise ApiError(400, f"this engine returns the sampled tokens' logprobs only: set {field} to 0", field)
    return k


def logit_bias(bias_map: dict[str, float] | None, vocab_size: int) -> tuple[tuple[int, float], ...]:
    """`logit_bias` as (token id, bias) pairs, each id in the vocabulary and bias in [-100, 100]."""
    if not bias_map:
        return ()
    out: list[tuple[int, float]] = []
    for key, bias in bias_map.items():
        try:
            token = int(key)
        except ValueError:
            raise ApiError(
                400, f"logit_bias keys are token ids; {key!r} is not an integer", "logit_bias"
            ) from None
        if not 0 <= token < vocab_size:
            raise ApiError(
                400, f"logit_bias token {token} is outside the vocabulary [0, {vocab_size})", "logit_bias"
            )
        if not -LOGIT_BIAS_LIMIT <= bias <= LOGIT_BIAS_LIMIT:
            raise ApiError(
                400, f"logit_bias for token {token} must be in [-100, 100], got {bias}", "logit_bias"
            )
        out.append((token, float(bias)))
    return tuple(out)
