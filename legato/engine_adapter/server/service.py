"""What the handlers share: request validation (model, lengths, vocabulary, sampling) and the
conversion of engine output into each API's token, logprob and finish-reason shapes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from legato.engine_adapter.base import (
    Engine,
    EngineError,
    GenerateRequest,
    GrammarSpec,
    SamplingParams,
    TopLogprobs,
)
from legato.engine_adapter.chat.grammar import GrammarError, grammar_of
from legato.engine_adapter.chat.plan import ChatPlan, PlanError, plan_chat
from legato.engine_adapter.openai_api import (
    ChatCompletionRequest,
    ChatLogprobs,
    CompletionLogprobs,
    PromptTokensDetails,
    SGLangFinishReason,
    TokenLogprob,
    TopLogprob,
    Usage,
    VLLMTokenSamplingParams,
)
from legato.engine_adapter.openai_spec import SpeculativeUsage
from legato.engine_adapter.server.errors import ApiError
from legato.engine_adapter.server.lifecycle import Generation
from legato.engine_adapter.server.openai_fields import logit_bias, top_logprobs_of


def make_usage(
    prompt_tokens: int, completion_tokens: int, cached_tokens: int, spec: tuple[int, int] = (0, 0)
) -> Usage:
    """OpenAI's usage; `spec` (drafted, accepted speculative tokens) shows as `usage.speculative`
    when the request speculated."""
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens),
        speculative=SpeculativeUsage(drafted_tokens=spec[0], accepted_tokens=spec[1]) if spec[0] else None,
    )


def stop_strings(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)


def finite(value: float) -> float:
    # JSON has no -inf; vLLM clamps the same way.
    return value if math.isfinite(value) else -9999.0


@dataclass(frozen=True, slots=True)
class ChatPrompt:
    prompt: tuple[int, ...]
    max_tokens_field: str
    max_tokens: int
    plan: ChatPlan


class EngineService:
    """The handlers' shared logic: validation, request building, output formatting."""

    def __init__(self, engine: Engine, max_model_len: int | None, chunk_timeout_s: float) -> None:
        self.engine = engine
        self.model = engine.model_name
        self.max_model_len = max_model_len
        self.chunk_timeout_s = chunk_timeout_s
        self.tokenizer = engine.tokenizer

    def check_model(self, model: str | None) -> None:
        if model and model != self.model:
            raise ApiError(
                404,
                f"model {model!r} is not served here; use {self.model!r} (see GET /v1/models)",
                "model",
            )

    def vllm_sampling(
        self, sp: VLLMTokenSamplingParams, prompt_len: int, grammar: GrammarSpec | None = None
    ) -> SamplingParams:
        """vLLM's JSON `sampling_params` (engine server and `legato serve`'s RL route alike)."""
        return self.sampling(
            max_tokens=sp.max_tokens,
            max_tokens_field="sampling_params.max_tokens",
            prompt_len=prompt_len,
            temperature=sp.temperature,
            top_p=sp.top_p,
            top_k=sp.top_k,
            seed=sp.seed,
            stop=sp.stop,
            stop_token_ids=sp.stop_token_ids,
            ignore_eos=sp.ignore_eos,
            logprobs=sp.logprobs is not None,
            top_logprobs=top_logprobs_of(self.engine, sp.logprobs or 0, "sampling_params.logprobs"),
            n=sp.n,
            presence_penalty=sp.presence_penalty,
            frequency_penalty=sp.frequency_penalty,
            logit_bias=logit_bias(sp.logit_bias, self.tokenizer.vocab_size),
            grammar=grammar,
        )

    def sampling(
        self,
        *,
        max_tokens: int | None,
        max_tokens_field: str,
        prompt_len: int,
        temperature: float,
        top_p: float,
        top_k: int,
        seed: int | None,
        stop: str | list[str] | None,
        stop_token_ids: list[int] | None,
        ignore_eos: bool,
        logprobs: bool,
        top_logprobs: int = 0,
        n: int = 1,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        logit_bias: tuple[tuple[int, float], ...] = (),
        grammar: GrammarSpec | None = None,
    ) -> SamplingParams:
        if prompt_len < 1:
            raise ApiError(400, "the prompt is empty; send at least one token", "prompt")
        limit = self.max_model_len
        if max_tokens is None:
            max_tokens = max(1, limit - prompt_len) if limit is not None else 256
        if max_tokens < 1:
            raise ApiError(400, f"{max_tokens_field} must be >= 1, got {max_tokens}", max_tokens_field)
        if limit is not None and prompt_len + max_tokens > limit:
            raise ApiError(
                400,
                f"the prompt has {prompt_len} tokens and {max_tokens_field} is {max_tokens}: together "
                f"they exceed this model's context of {limit} tokens; shorten the prompt or lower "
                f"{max_tokens_field}",
                "prompt" if prompt_len >= limit else max_tokens_field,
            )
        vocab = self.tokenizer.vocab_size
        bad = [t for t in stop_token_ids or () if not 0 <= t < vocab]
        if bad:
            raise ApiError(
                400, f"stop_token_ids {bad} are outside the vocabulary [0, {vocab})", "stop_token_ids"
            )
        try:
            return SamplingParams(
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=top_p,
                top_k=max(0, top_k),
                seed=seed,
                stop=stop_strings(stop),
                stop_token_ids=tuple(stop_token_ids or ()),
                ignore_eos=ignore_eos,
                logprobs=logprobs,
                top_logprobs=top_logprobs,
                n=n,
                presence_penalty=presence_penalty,
                frequency_penalty=frequency_penalty,
                logit_bias=logit_bias,
                grammar=grammar,
            )
        except ValueError as exc:
            raise ApiError(400, str(exc)) from exc

    def check_tokens(self, token_ids: Sequence[int], field: str) -> tuple[int, ...]:
        vocab = self.tokenizer.vocab_size
        bad = [t for t in token_ids if not 0 <= t < vocab]
        if bad:
            shown = bad[:5]
            raise ApiError(
                400, f"{field} holds token ids outside the vocabulary [0, {vocab}): {shown}", field
            )
        return tuple(token_ids)

    def prompt_ids(self, prompt: str | list[int] | list[str] | list[list[int]]) -> tuple[int, ...]:
        if isinstance(prompt, str):
            return tuple(self.tokenizer.encode(prompt))
        if prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise ApiError(
                    400,
                    f"batched prompts are not supported: send one prompt per request (got {len(prompt)})",
                    "prompt",
                )
            only = prompt[0]
            return self.prompt_ids(only) if isinstance(only, str) else self.check_tokens(only, "prompt")
        return self.check_tokens([int(t) for t in prompt if isinstance(t, int)], "prompt")

    def grammar(
        self, json_schema: Mapping[str, Any] | str | None, lark: str | None, field: str
    ) -> GrammarSpec | None:
        """The output grammar of an engine API's constraint fields (400 naming `field` if bad)."""
        try:
            return grammar_of(json_schema, lark)
        except GrammarError as exc:
            raise ApiError(400, f"{field}: {exc}", field) from exc

    def chat_plan(self, body: ChatCompletionRequest) -> ChatPlan:
        """Template inputs, output grammar and tool parsing of a chat request (400 on bad input)."""
        try:
            return plan_chat(body, self.tokenizer)
        except PlanError as exc:
            raise ApiError(400, str(exc), exc.param) from exc

    def render(self, plan: ChatPlan, add_generation_prompt: bool) -> tuple[int, ...]:
        """The plan's messages (and tools) through the chat template."""
        try:
            if plan.tools:
                ids = self.tokenizer.apply_chat_template(
                    plan.messages, add_generation_prompt=add_generation_prompt, tools=plan.tools
                )
            else:  # the two-argument form: tokenizers that predate tools still work
                ids = self.tokenizer.apply_chat_template(
                    plan.messages, add_generation_prompt=add_generation_prompt
                )
        except EngineError as exc:
            raise ApiError(400, str(exc), "messages") from exc
        return tuple(ids)

    async def chat_prompt(self, body: ChatCompletionRequest) -> ChatPrompt:
        """A chat request's prompt (messages and tools through the chat template), its plan, the
        max-tokens field it used (`max_completion_tokens` wins) and its value, defaulted as
        OpenAI does."""
        plan = self.chat_plan(body)
        prompt = self.render(plan, body.add_generation_prompt)
        if body.max_completion_tokens is not None:
            return ChatPrompt(prompt, "max_completion_tokens", body.max_completion_tokens, plan)
        if body.max_tokens is not None:
            return ChatPrompt(prompt, "max_tokens", body.max_tokens, plan)
        return ChatPrompt(prompt, "max_tokens", await self.default_max_tokens(len(prompt)), plan)

    async def default_max_tokens(self, prompt_len: int) -> int:
        """OpenAI's chat default: as many tokens as fit, in the context *and* in the KV cache (an
        engine that checks a request's worst case up front would refuse a default it cannot hold)."""
        with anyio.fail_after(30):
            room = (await self.engine.capacity()).total_tokens
        if self.max_model_len is not None:
            room = min(room, self.max_model_len)
        return max(1, room - prompt_len)

    async def start(self, request: GenerateRequest) -> Generation:
        generation = Generation(self.engine, request, self.chunk_timeout_s)
        await generation.start()
        return generation

    def token_bytes(self, token_id: int) -> bytes:
        """The token's own bytes: for a byte-level token that is part of a UTF-8 character, that
        byte (not the replacement character its lone decoding gives)."""
        raw = getattr(self.tokenizer, "token_bytes", None)
        if raw is not None:
            return bytes(raw(token_id))
        return self.tokenizer.decode([token_id]).encode()

    def token_str(self, token_id: int, as_id: bool = False) -> str:
        """The token as logprobs show it: its text, with bytes that are no UTF-8 on their own
        written `\\xNN` (as OpenAI does; `bytes` carries the exact value), or `token_id:N` with
        vLLM's `return_tokens_as_token_ids`."""
        if as_id:
            return f"token_id:{token_id}"
        return self.token_bytes(token_id).decode("utf-8", errors="backslashreplace")

    def _token_logprob(self, token_id: int, logprob: float, as_id: bool) -> TopLogprob:
        raw = self.token_bytes(token_id)
        return TopLogprob(token=self.token_str(token_id, as_id), logprob=finite(logprob), bytes=list(raw))

    def chat_logprobs(
        self,
        token_ids: Sequence[int],
        logprobs: Sequence[float] | None,
        top: Sequence[TopLogprobs] | None = None,
        as_ids: bool = False,
    ) -> ChatLogprobs | None:
        if logprobs is None:
            return None
        content = []
        for i, (tid, lp) in enumerate(zip(token_ids, logprobs, strict=False)):
            this = self._token_logprob(tid, lp, as_ids)
            alternatives = [
                self._token_logprob(t, v, as_ids) for t, v in (top[i] if top and i < len(top) else ())
            ]
            content.append(
                TokenLogprob(
                    token=this.token, logprob=this.logprob, bytes=this.bytes, top_logprobs=alternatives
                )
            )
        return ChatLogprobs(content=content)

    def token_id_logprobs(
        self,
        token_ids: Sequence[int],
        logprobs: Sequence[float] | None,
        top: Sequence[TopLogprobs] | None = None,
    ) -> ChatLogprobs | None:
        """vLLM's token endpoint spells tokens as `token_id:N` (no detokenization)."""
        if logprobs is None:
            return None
        content = [
            TokenLogprob(
                token=f"token_id:{tid}",
                logprob=finite(lp),
                top_logprobs=[
                    TopLogprob(token=f"token_id:{t}", logprob=finite(v))
                    for t, v in (top[i] if top and i < len(top) else ())
                ],
            )
            for i, (tid, lp) in enumerate(zip(token_ids, logprobs, strict=False))
        ]
        return ChatLogprobs(content=content)

    def completion_logprobs(
        self,
        token_ids: Sequence[int],
        logprobs: Sequence[float] | None,
        top: Sequence[TopLogprobs] | None,
        offset: int,
        as_ids: bool = False,
    ) -> CompletionLogprobs | None:
        """The legacy shape: per token its string, logprob, text offset, and a dict of the most
        likely alternatives plus the sampled token (so up to `logprobs + 1` entries, as OpenAI)."""
        if logprobs is None:
            return None
        out = CompletionLogprobs()
        for i, (tid, lp) in enumerate(zip(token_ids, logprobs, strict=False)):
            text = self.token_str(tid, as_ids)
            out.tokens.append(text)
            out.token_logprobs.append(finite(lp))
            alternatives = {
                self.token_str(t, as_ids): finite(v) for t, v in (top[i] if top and i < len(top) else ())
            }
            alternatives.setdefault(text, finite(lp))
            out.top_logprobs.append(alternatives)
            out.text_offset.append(offset)
            offset += len(self.tokenizer.decode([tid]))
        return out

    def sglang_finish(
        self, reason: str | None, completion_tokens: int, last_token: int | None, sampling: SamplingParams
    ) -> SGLangFinishReason | None:
        if reason is None:
            return None
        if reason == "length":
            return SGLangFinishReason(type="length", length=completion_tokens)
        if reason == "stop":
            stops = {self.tokenizer.eos_token_id, *sampling.stop_token_ids}
            matched = last_token if last_token in stops else None
            return SGLangFinishReason(type="stop", matched=matched)
        return SGLangFinishReason(type="abort", message=reason)
