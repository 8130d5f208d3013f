"""Wire models of the engine server: OpenAI's API, SGLang's `/generate`, vLLM's token API.

Shapes follow the upstream servers closely enough that their own clients work unchanged: the
official `openai` client against `/v1/*`, SGLang's native `/generate` (`text` or `input_ids`,
`sampling_params`, `meta_info`), and vLLM's token-in/token-out `/inference/v1/generate`.
The OpenAI requests (`/v1/completions`, `/v1/chat/completions`) declare every field OpenAI
defines that a client may send, plus the vLLM extras we honour; each declared field is honoured, or
refused with a 400 naming it when it asks for what we cannot do (`store: true`, `suffix`, ...),
and an undeclared field is a 400 naming it too, never silently dropped (see `OpenAIRequest`).
SGLang's and vLLM's native shapes still ignore unknown fields, as those servers do.

The HTTP engines (`legato.engine_adapter.http`) parse responses with the same models, so the
client and the server cannot drift apart silently.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from legato.engine_adapter import fields as f
from legato.engine_adapter.openai_spec import SpeculativeOptions, SpeculativeUsage
from legato.engine_adapter.openai_tools import (
    ResponseFormat,
    StructuredOutputs,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolDefinition,
)


def new_id(prefix: str) -> str:
    """A fresh response/request id in OpenAI's style (`cmpl-…`, `chatcmpl-…`)."""
    return f"{prefix}-{uuid.uuid4().hex}"


class _Request(BaseModel):
    """Requests ignore unknown fields: clients send provider extras we do not need."""

    model_config = ConfigDict(extra="ignore", strict=True)


def exactly_one(**alternatives: str) -> ConfigDict:
    """The JSON Schema of "send exactly one of these fields" (name -> its JSON type; null counts
    as not sent), which the handlers check: the OpenAPI document states the rule."""
    one_of = [
        {"required": [name], "properties": {name: {"type": kind}}} for name, kind in alternatives.items()
    ]
    extra: dict[str, Any] = {"oneOf": one_of}
    return ConfigDict(json_schema_extra=extra)


class OpenAIRequest(BaseModel):
    """OpenAI request bodies refuse undeclared fields: a field a client sends is either honoured
    or answered with a 400 that names it (the server turns `extra_forbidden` into that message).
    Types are strict: `"stream": "yes"` is a 400, not `true`."""

    model_config = f.STRICT_REQUEST


MAX_N, MAX_TOP_LOGPROBS = f.MAX_N, f.MAX_TOP_LOGPROBS  # every bound lives in `fields`


class _Response(BaseModel):
    """Responses keep unknown fields when parsed by our HTTP engines (servers add extras)."""

    model_config = ConfigDict(extra="allow")


# --- errors ----------------------------------------------------------------------------------


class ErrorInfo(_Response):
    message: str
    type: str = "BadRequestError"
    param: str | None = None
    code: int = 400


class ErrorResponse(_Response):
    """OpenAI's (and vLLM's) error body: `{"error": {"message", "type", "param", "code"}}`."""

    error: ErrorInfo


# --- shared OpenAI pieces --------------------------------------------------------------------


class StreamOptions(OpenAIRequest):
    include_usage: bool = False
    # vLLM extra: put the running `usage` in every chunk, not just the last one.
    continuous_usage_stats: bool = False


class PromptTokensDetails(_Response):
    cached_tokens: int = 0


class Usage(_Response):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None
    speculative: SpeculativeUsage | None = None  # Legato extension: drafted / accepted tokens


class SamplingFields(OpenAIRequest):
    """Sampling fields common to `/v1/completions` and `/v1/chat/completions` (OpenAI's plus
    vLLM's extras). Defaults are OpenAI's: temperature 1, top_p 1."""

    model: str
    max_tokens: f.TokenCount | None = Field(default=None, description="Tokens to generate at most (>= 1).")
    temperature: f.Temperature = 1.0
    top_p: f.TopP = 1.0
    top_k: f.TopK = Field(default=0, description="vLLM extra; 0 or -1 disables top-k.")
    seed: f.Seed | None = None
    stop: f.StopList | None = None
    stop_token_ids: f.StopTokenIds | None = Field(default=None, description="vLLM extra.")
    ignore_eos: bool = Field(default=False, description="vLLM extra.")
    n: f.SampleCount = Field(
        default=1,
        description=f"Samples of the prompt (1..{MAX_N}): prefilled once, their KV forked, returned as "
        "`choices[i]` with `index` i. Engines without parallel sampling take only 1.",
    )
    presence_penalty: f.Penalty = Field(
        default=0.0, description="Subtracted from the logit of every token generated so far."
    )
    frequency_penalty: f.Penalty = Field(
        default=0.0, description="Subtracted once per occurrence among the generated tokens."
    )
    logit_bias: f.LogitBias | None = Field(
        default=None, description="Token id (as a string) -> bias in [-100, 100] added to its logit."
    )
    service_tier: Literal["auto", "default"] | None = Field(
        default=None, description="One tier is served here: `auto` and `default` (the same) only."
    )
    store: f.NotStored = Field(
        default=None, description="Completions are never stored here: only `false` is taken."
    )
    metadata: dict[str, str] | None = Field(
        default=None, max_length=0, description="Only kept with `store: true` (refused here): must be empty."
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    priority: f.Priority = Field(default=0, description="vLLM extra: lower runs first.")
    cache_salt: str | None = Field(
        default=None,
        description=(
            "vLLM extra: salt mixed into prefix-cache keys. This server sits behind Legato, which "
            "sets it from the authenticated tenant; do not expose it to untrusted clients directly."
        ),
    )
    request_id: str | None = Field(default=None, description="vLLM extra: id used for abort and logs.")
    return_tokens_as_token_ids: bool = Field(
        default=False, description="vLLM extra: logprobs name tokens `token_id:N` instead of their text."
    )
    speculative: SpeculativeOptions | None = Field(default=None, description="Legato extension.")
    user: str | None = Field(
        default=None,
        max_length=256,
        description="Your end user's id. As at OpenAI it does not change the output; the engine "
        "server logs it with the request id (abuse monitoring).",
    )


# --- /v1/completions -------------------------------------------------------------------------


class CompletionRequest(SamplingFields):
    prompt: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[f.TokenId], Field(min_length=1)]
        | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=1)]
        | Annotated[list[Annotated[list[f.TokenId], Field(min_length=1)]], Field(min_length=1, max_length=1)]
    ) = Field(description="Text, or token ids. A batch (list of prompts) must hold exactly one prompt.")
    max_tokens: f.TokenCount | None = 16
    logprobs: f.TopLogprobs | None = Field(
        default=None,
        description="Return each token's logprob and the `logprobs` most likely alternatives "
        "(log-softmax of the raw model logits).",
    )
    echo: bool = Field(default=False, description="Prepend the prompt's text (not with `logprobs`).")
    best_of: f.SampleCount | None = Field(
        default=None,
        description=f"Draw this many samples (n..{MAX_N}) and return the `n` with the highest total "
        "logprob; not with `stream`.",
    )
    suffix: str | None = Field(
        default=None, max_length=0, description="Insertion is not supported: must be empty."
    )
    return_token_ids: bool = Field(default=False, description="vLLM extra: include `token_ids` per choice.")
    structured_outputs: StructuredOutputs | None = Field(
        default=None, description="vLLM extra: constrain the output to a JSON Schema or a Lark grammar."
    )


class CompletionLogprobs(_Response):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(_Response):
    index: int = 0
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    token_ids: list[int] | None = None
    prompt_token_ids: list[int] | None = None


class CompletionResponse(_Response):
    id: str = Field(default_factory=lambda: new_id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


# The stream chunk has the same shape (`object` is "text_completion" in both for OpenAI).
CompletionStreamResponse = CompletionResponse


# --- /v1/chat/completions --------------------------------------------------------------------


class ContentPart(OpenAIRequest):
    """Only text parts: the models served here read no images, audio or files (a 400 says so)."""

    type: Literal["text"] = "text"
    text: str = ""


class ChatMessage(OpenAIRequest):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = Field(
        default=None, description="Passed to the model's chat template with the message."
    )
    tool_calls: list[ToolCall] | None = Field(default=None, description="An assistant turn's tool calls.")
    tool_call_id: str | None = Field(default=None, description="A tool message: the call it answers.")

    def text(self) -> str:
        """The message's text (its text parts joined)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: f.TokenCount | None = Field(
        default=None, description="OpenAI's newer name for max_tokens."
    )
    logprobs: bool = False
    top_logprobs: f.TopLogprobs | None = Field(
        default=None,
        description="With `logprobs`: the most likely alternatives at each token (log-softmax of the "
        "raw model logits, as vLLM reports them).",
    )
    add_generation_prompt: bool = Field(default=True, description="vLLM extra.")
    tools: list[ToolDefinition] | None = Field(
        default=None, description="Functions the model may call; rendered by the model's chat template."
    )
    tool_choice: ToolChoice | None = Field(
        default=None,
        description="`none`, `auto` (default with tools), `required` or a named function; `required` "
        "and a named function constrain the output to a schema-valid call.",
    )
    parallel_tool_calls: bool = Field(default=True, description="False: at most one tool call.")
    response_format: ResponseFormat | None = Field(
        default=None, description="`text`, `json_object` or `json_schema` (enforced by a grammar)."
    )


class TopLogprob(_Response):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(_Response):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(_Response):
    content: list[TokenLogprob] | None = None


class ChatResponseMessage(_Response):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(_Response):
    index: int = 0
    message: ChatResponseMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    token_ids: list[int] | None = None


class ChatCompletionResponse(_Response):
    id: str = Field(default_factory=lambda: new_id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None


class ChatDelta(_Response):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(_Response):
    index: int = 0
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    token_ids: list[int] | None = None


class ChatCompletionChunk(_Response):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


# --- /v1/models ------------------------------------------------------------------------------


class ModelCard(_Response):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "legato"
    max_model_len: int | None = None


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# --- /tokenize, /detokenize (vLLM's shapes) --------------------------------------------------


class TokenizeRequest(_Request):
    model_config = exactly_one(prompt="string", messages="array")

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_generation_prompt: bool = True
    tools: list[ToolDefinition] | None = Field(default=None, description="With `messages`: tools to render.")


class TokenizeResponse(_Response):
    count: int
    max_model_len: int | None = None
    tokens: list[int]


class DetokenizeRequest(_Request):
    model: str | None = None
    tokens: list[f.TokenId]


class DetokenizeResponse(_Response):
    prompt: str


# --- SGLang /generate ------------------------------------------------------------------------


class SGLangSamplingParams(_Request):
    """SGLang's `sampling_params` (the subset an engine of ours can honour)."""

    max_new_tokens: f.TokenCount = Field(default=128, description="Tokens to generate at most (>= 1).")
    temperature: f.Temperature = 1.0
    top_p: f.TopP = 1.0
    top_k: f.TopK = -1
    stop: f.StopList | None = None
    stop_token_ids: f.StopTokenIds | None = None
    ignore_eos: bool = False
    seed: f.Seed | None = Field(default=None, description="Alias of SGLang's `sampling_seed`.")
    n: f.SampleCount = Field(default=1, description="Only 1 here; `/v1/completions` takes n > 1.")
    sampling_seed: f.Seed | None = None
    json_schema: str | None = Field(default=None, description="Constrain the output to this JSON Schema.")
    ebnf: str | None = Field(default=None, description="Constrain the output to this (Lark) grammar.")
    presence_penalty: f.Penalty = 0.0
    frequency_penalty: f.Penalty = 0.0
    logit_bias: f.LogitBias | None = None


class SGLangGenerateRequest(_Request):
    model_config = exactly_one(text="string", input_ids="array")

    text: Annotated[str, Field(min_length=1)] | None = None
    input_ids: Annotated[list[f.TokenId], Field(min_length=1)] | None = None
    sampling_params: SGLangSamplingParams = Field(default_factory=SGLangSamplingParams)
    return_logprob: bool = False
    rid: str | None = None
    stream: bool = False
    priority: f.Priority | None = Field(default=None, description="SGLang's convention: higher runs first.")
    session_id: str | None = Field(default=None, description="Session identity (routing/affinity only).")
    routing_key: str | None = None
    cache_salt: str | None = None


class SGLangFinishReason(_Response):
    """`{"type": "length", "length": N}`, `{"type": "stop", "matched": id|str}` or
    `{"type": "abort", "message": ...}`, as SGLang reports it."""

    type: str
    length: int | None = None
    matched: int | str | None = None
    message: str | None = None


class SGLangMetaInfo(_Response):
    id: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    finish_reason: SGLangFinishReason | None = None
    # [[logprob, token_id, text-or-null], ...] for the output tokens.
    output_token_logprobs: list[tuple[float, int, str | None]] | None = None
    e2e_latency: float | None = None


class SGLangGenerateResponse(_Response):
    text: str = ""
    output_ids: list[int] = Field(default_factory=list)
    meta_info: SGLangMetaInfo


class SGLangAbortRequest(_Request):
    """Abort by `rid`, or everything (`abort_all: true`; `legato serve` only, for admins)."""

    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": ["rid"], "properties": {"rid": {"minLength": 1}}},
                {"required": ["abort_all"], "properties": {"abort_all": {"const": True}}},
            ]
        }
    )

    rid: str = ""
    abort_all: bool = False


class EngineAbortRequest(_Request):
    """The engine server's abort: by `rid` only (it has no control plane to abort everything)."""

    rid: str = Field(min_length=1, description="The `rid` of the `/generate` request to abort.")
    abort_all: Literal[False] = Field(default=False, description="SGLang's abort-everything: not here.")


# --- vLLM /inference/v1/generate (tokens in, tokens out) -------------------------------------


class VLLMTokenSamplingParams(_Request):
    """vLLM's `SamplingParams` as JSON (the subset an engine of ours can honour)."""

    max_tokens: f.TokenCount = Field(default=16, description="Tokens to generate at most (>= 1).")
    temperature: f.Temperature = 1.0
    top_p: f.TopP = 1.0
    top_k: f.TopK = 0
    seed: f.Seed | None = None
    n: f.SampleCount = Field(default=1, description="Only 1 here; `/v1/completions` takes n > 1.")
    stop: f.StopList | None = None
    stop_token_ids: f.StopTokenIds | None = None
    ignore_eos: bool = False
    logprobs: f.TopLogprobs | None = Field(
        default=None, description="Return the sampled tokens' logprobs and this many alternatives."
    )
    structured_outputs: StructuredOutputs | None = None
    presence_penalty: f.Penalty = 0.0
    frequency_penalty: f.Penalty = 0.0
    logit_bias: f.LogitBias | None = None


class VLLMGenerateRequest(_Request):
    request_id: str | None = None
    token_ids: Annotated[list[f.TokenId], Field(min_length=1)]
    sampling_params: VLLMTokenSamplingParams = Field(default_factory=VLLMTokenSamplingParams)
    model: str | None = None
    stream: bool = False
    cache_salt: str | None = None
    priority: f.Priority = 0


class VLLMGenerateChoice(_Response):
    index: int = 0
    token_ids: list[int] | None = None
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class VLLMGenerateResponse(_Response):
    request_id: str
    choices: list[VLLMGenerateChoice]
    usage: Usage | None = None


class HealthResponse(_Response):
    status: Literal["ok"] = "ok"
    model: str
