"""The `Engine` protocol: what Legato needs from an inference engine, and nothing more.

Every engine (the embedded torch engine, vLLM / SGLang over HTTP, the simulated engine) is
token-in / token-out. Text only exists at the edges (the SDK's prompt templates, the
OpenAI-compatible servers), where the engine's `tokenizer` converts.

The base protocol is small on purpose. What only some engines can do (pin prefixes, export KV
blocks, take eviction hints) is announced in `capabilities` and offered through the narrower
protocols at the bottom of this module, so callers check a flag instead of catching
`NotImplementedError`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from legato.cache.kv_block import KVBlock as KVBlock  # re-exported: KVTransferEngine moves them
from legato.spec.adaptive import check_draft_len
from legato.spec.drafter import ENGINE_DRAFTERS


class EngineError(RuntimeError):
    """An engine failed a request in a way the caller should see (bad input, engine down)."""


class Capability(enum.StrEnum):
    """Optional abilities an engine may announce in `Engine.capabilities`."""

    LOGPROBS = "logprobs"  # per-token logprobs of sampled tokens
    TOP_LOGPROBS = "top_logprobs"  # `SamplingParams.top_logprobs`: the most likely alternatives
    PRIORITY = "priority"  # honours `GenerateRequest.priority`
    PREFIX_QUERY = "prefix_query"  # `cached_prefix_tokens` reflects real cache state
    PREFIX_SNAPSHOT = "prefix_snapshot"  # `PrefixSnapshotEngine`: read the prefix cache without awaiting
    PREFILL_COSTS = "prefill_costs"  # `PrefillCostEngine`: its measured prefill cost, read at once
    PIN = "pin"  # `PinnableEngine`: keep a prefix resident through a tool call
    EVICTION_HINTS = "eviction_hints"  # `EvictionHintEngine`: Legato decides what stays
    KV_EXPORT = "kv_export"  # `KVTransferEngine.export_blocks`
    KV_IMPORT = "kv_import"  # `KVTransferEngine.import_blocks`
    PREFETCH = "prefetch"  # `PrefetchEngine`: pull a prefix from a slow KV tier ahead of use
    WEIGHT_UPDATE = "weight_update"  # RL: load new policy weights in place
    SPECULATIVE = "speculative"  # token-level speculative decoding
    # `SamplingParams.n > 1`: the samples share one prefill, streamed with `TokenChunk.index`
    PARALLEL_SAMPLING = "parallel_sampling"


@dataclass(frozen=True, slots=True)
class GrammarSpec:
    """A constraint on the output: `kind` "json_schema" (`text` is a JSON Schema) or "lark" (`text`
    is an llguidance Lark grammar, which may embed JSON Schemas with `%json`). Engines enforce it
    with a token mask (torch engine) or pass it to theirs (vLLM, SGLang)."""

    kind: str
    text: str


@dataclass(frozen=True, slots=True)
class SpeculativeParams:
    """One request's speculative decoding (engines with `Capability.SPECULATIVE`): the drafter
    (`"none"`: this request does not speculate) and the longest draft one verify step checks."""

    drafter: str = "suffix"
    num_tokens: int = 4

    def __post_init__(self) -> None:
        if self.drafter not in (*ENGINE_DRAFTERS, "none"):
            valid = ", ".join((*ENGINE_DRAFTERS, "none"))
            raise ValueError(f"drafter must be one of {valid}, got {self.drafter!r}")
        check_draft_len(self.num_tokens, "num_speculative_tokens")


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to sample. Defaults are greedy decoding of up to 256 tokens."""

    max_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 disables top-k
    seed: int | None = None  # per-request seed: same seed + same prompt = same tokens
    stop: tuple[str, ...] = ()  # stop strings (matched on decoded text, not included in output)
    stop_token_ids: tuple[int, ...] = ()  # in addition to the tokenizer's end-of-sequence token
    ignore_eos: bool = False
    logprobs: bool = False  # return the logprob of each sampled token
    top_logprobs: int = 0  # with logprobs: also the this many most likely tokens at each step
    n: int = 1  # samples of the prompt (needs Capability.PARALLEL_SAMPLING when > 1)
    # OpenAI's penalties over the tokens generated so far: logit[t] -= frequency * count(t) +
    # presence * (count(t) > 0)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)
    grammar: GrammarSpec | None = None  # structured output: only tokens the grammar allows
    speculative: SpeculativeParams | None = None  # None: the engine's default

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.top_logprobs < 0:
            raise ValueError(f"top_logprobs must be >= 0, got {self.top_logprobs}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not -2.0 <= value <= 2.0:
                raise ValueError(f"{name} must be in [-2, 2], got {value}")
        if any(not math.isfinite(bias) for _, bias in self.logit_bias):
            raise ValueError("logit_bias values must be finite numbers")


# A prefill-only (cache-warm) request: `generate` with these sampling parameters. Its prompt's
# KV lands in the engine's prefix cache as for any request, so every engine (torch, simulated,
# vLLM / SGLang over HTTP) serves it on its normal request path; the one token it decodes
# (engines refuse max_tokens=0) costs one decode step and is thrown away.
PREFILL_ONLY = SamplingParams(max_tokens=1)


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """One LLM call as an engine sees it."""

    request_id: str
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    # Lower value runs first (vLLM's convention). Engines without Capability.PRIORITY ignore it.
    priority: int = 0
    # Salt mixed into every prefix-cache block hash. Always derived from the *authenticated*
    # tenant by the server, never taken from a client. None = the embedded single-tenant default.
    cache_salt: str | None = None
    # The program run this call belongs to: session routing / affinity for engines that use it.
    session_id: str | None = None


# Per generated token: the `top_logprobs` most likely (token id, logprob) pairs, best first.
TopLogprobs = tuple[tuple[int, float], ...]


@dataclass(frozen=True, slots=True)
class TokenChunk:
    """One streamed piece of a generation. The last chunk of the stream has `finished=True`.

    With `n > 1` the samples' chunks are interleaved, each tagged with its sample `index`; a
    sample's last chunk carries its `finish_reason`, and `finished` is set on the chunk that
    ends the last sample. With `n = 1` both happen on the same chunk."""

    token_ids: tuple[int, ...]
    text: str = ""  # decoded text of `token_ids` (delta), stop strings already cut
    logprobs: tuple[float, ...] | None = None  # one per token when requested
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort" on the sample's last chunk
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from the prefix cache (known from chunk 1)
    index: int = 0  # which sample (0 .. n-1) these tokens belong to
    top_logprobs: tuple[TopLogprobs, ...] | None = None  # one per token when requested
    # The policy weights that produced these tokens (engines with Capability.WEIGHT_UPDATE)
    weight_version: str | None = None
    spec_drafted: int = 0  # speculative tokens drafted for the request so far
    spec_accepted: int = 0  # ... and accepted by verification


@dataclass(frozen=True, slots=True)
class GenerateResult:
    """A whole generation, as `collect` assembles it from the stream."""

    request_id: str
    token_ids: tuple[int, ...]
    text: str
    logprobs: tuple[float, ...] | None
    finish_reason: str
    prompt_tokens: int
    cached_tokens: int
    index: int = 0
    top_logprobs: tuple[TopLogprobs, ...] | None = None
    spec_drafted: int = 0  # speculative tokens drafted for the request
    spec_accepted: int = 0  # ... and accepted by verification


@dataclass(frozen=True, slots=True)
class EngineCapacity:
    """KV-cache capacity in blocks. `free_blocks` counts blocks usable right now
    (free, or cached but unreferenced and so evictable)."""

    block_size: int
    total_blocks: int
    free_blocks: int

    @property
    def total_tokens(self) -> int:
        return self.block_size * self.total_blocks


@runtime_checkable
class Tokenizer(Protocol):
    """Text <-> token ids. Engines expose theirs so the SDK can build token-level prompts."""

    @property
    def eos_token_id(self) -> int: ...

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, token_ids: Sequence[int]) -> str: ...

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[int]:
        """Messages (OpenAI's shape: role, content, tool_calls with dict arguments, tool_call_id)
        through the chat template; `tools` (OpenAI tool definitions) go to templates that take them."""
        ...


@runtime_checkable
class Engine(Protocol):
    """Token-in / token-out inference engine."""

    @property
    def model_name(self) -> str: ...

    @property
    def capabilities(self) -> frozenset[Capability]: ...

    @property
    def tokenizer(self) -> Tokenizer: ...

    def generate(self, request: GenerateRequest) -> AsyncIterator[TokenChunk]:
        """Stream the generation. Raises `EngineError` for requests the engine cannot serve
        (prompt too long, engine closed). Cancelling the iteration aborts the request."""
        ...

    async def capacity(self) -> EngineCapacity: ...

    async def cached_prefix_tokens(self, token_ids: Sequence[int], cache_salt: str | None = None) -> int:
        """How many leading tokens of `token_ids` are in the engine's prefix cache now
        (a multiple of the block size; 0 for engines without Capability.PREFIX_QUERY)."""
        ...

    async def abort(self, request_id: str) -> None: ...

    async def close(self) -> None: ...


# --- optional capabilities -------------------------------------------------------------------


@runtime_checkable
class PinnableEngine(Engine, Protocol):
    """Capability.PIN: keep a prefix's blocks resident (unevictable) until unpinned or the TTL
    expires, e.g. through a tool call whose result the next call will append to."""

    async def pin(self, token_ids: Sequence[int], cache_salt: str | None, ttl_s: float) -> str:
        """Pin the cached leading blocks of `token_ids`; returns a pin id for `unpin`."""
        ...

    async def unpin(self, pin_id: str) -> None: ...


@runtime_checkable
class EvictionHintEngine(Engine, Protocol):
    """Capability.EVICTION_HINTS: Legato's scheduler tells the engine when each cached prefix
    is next expected to be used; among evictable blocks the engine evicts the one whose next
    use is furthest away (suffix blocks before their prefixes)."""

    async def set_next_use(self, token_ids: Sequence[int], cache_salt: str | None, next_use_s: float) -> None:
        """`next_use_s` is seconds from now; `math.inf` means "not expected again"."""
        ...


class PrefixSnapshotEngine(Engine, Protocol):
    """Capability.PREFIX_SNAPSHOT: an in-process engine whose prefix cache can be read at once,
    so a scheduler can answer a policy's "how much of this prefix is resident" synchronously."""

    def resident_prefix_tokens(self, token_ids: Sequence[int], cache_salt: str | None) -> int:
        """Leading tokens of `token_ids` whose KV blocks are cached on the device now, in whole
        blocks. A lock-free snapshot read while the engine may be mutating its cache, so it can
        be off by a block that is being evicted right now."""
        ...


class PrefillCostEngine(Engine, Protocol):
    """Capability.PREFILL_COSTS: an engine that knows what a prompt token costs it (the torch
    engine times its own steps; a vLLM or SGLang server times each request's prefill phase, or
    its first token and queueing, in its `/metrics`), so a policy can price recomputing a
    context at that instead of the upper bound it measures from call timings (busy time over
    all tokens, decode included). Read at once: the answer is the engine's last estimate, not
    a round trip."""

    def prefill_costs(self) -> tuple[float, float] | None:
        """(seconds per prompt token, seconds per attended (query, key) pair) as last estimated;
        None before the engine has measured a prefill."""
        ...


class PrefetchEngine(Engine, Protocol):
    """Capability.PREFETCH: the engine keeps KV in slower tiers (host RAM, Redis) and can start
    bringing a prefix closer before the call that needs it arrives (while a tool runs)."""

    async def prefetch(self, token_ids: Sequence[int], cache_salt: str | None, next_use_s: float) -> bool:
        """Start moving the prefix's tiered blocks towards the device in the background; False
        when there is nothing to do or the request was dropped. `next_use_s`: seconds from now."""
        ...


@runtime_checkable
class KVTransferEngine(Engine, Protocol):
    """Capability.KV_EXPORT / KV_IMPORT: move KV blocks in and out of the engine by hash."""

    async def export_blocks(self, block_hashes: Sequence[bytes]) -> list[KVBlock]:
        """Blocks currently cached on the device, in the order asked; missing ones are skipped."""
        ...

    async def import_blocks(self, blocks: Sequence[KVBlock]) -> int:
        """Install blocks into the prefix cache; returns how many were installed."""
        ...


def max_model_len_of(engine: object) -> int | None:
    """The engine's context limit (prompt + output tokens), where it states one: an attribute
    of the engine, or of its core (the torch engine's), else None."""
    for holder in (engine, getattr(engine, "core", None)):
        limit = getattr(holder, "max_model_len", None)
        if isinstance(limit, int):
            return limit
    return None


def assemble_samples(request: GenerateRequest, chunks: Iterable[TokenChunk]) -> list[GenerateResult]:
    """Fold a request's streamed chunks into one result per sample (`n` of them, by index)."""
    n = request.sampling.n
    tokens: list[list[int]] = [[] for _ in range(n)]
    texts: list[list[str]] = [[] for _ in range(n)]
    logprobs: list[list[float]] = [[] for _ in range(n)]
    tops: list[list[TopLogprobs]] = [[] for _ in range(n)]
    reasons: list[str] = ["abort"] * n
    prompt_tokens = cached_tokens = drafted = accepted = 0
    for chunk in chunks:
        i = chunk.index
        if not 0 <= i < n:
            raise EngineError(f"request {request.request_id!r}: chunk for sample {i} of n={n}")
        tokens[i].extend(chunk.token_ids)
        texts[i].append(chunk.text)
        if chunk.logprobs is not None:
            logprobs[i].extend(chunk.logprobs)
        if chunk.top_logprobs is not None:
            tops[i].extend(chunk.top_logprobs)
        prompt_tokens = chunk.prompt_tokens or prompt_tokens
        cached_tokens = chunk.cached_tokens or cached_tokens
        drafted, accepted = max(drafted, chunk.spec_drafted), max(accepted, chunk.spec_accepted)
        if chunk.finish_reason is not None:
            reasons[i] = chunk.finish_reason
        elif chunk.finished and n == 1:
            reasons[i] = "stop"
    want_lp = request.sampling.logprobs
    want_top = want_lp and request.sampling.top_logprobs > 0
    return [
        GenerateResult(
            request_id=request.request_id,
            token_ids=tuple(tokens[i]),
            text="".join(texts[i]),
            logprobs=tuple(logprobs[i]) if want_lp else None,
            finish_reason=reasons[i],
            prompt_tokens=prompt_tokens,
            cached_tokens=cached_tokens,
            spec_drafted=drafted,
            spec_accepted=accepted,
            index=i,
            top_logprobs=tuple(tops[i]) if want_top else None,
        )
        for i in range(n)
    ]


def assemble_result(request: GenerateRequest, chunks: Iterable[TokenChunk]) -> GenerateResult:
    """Fold a request's streamed chunks into one result (what `collect` returns); with n > 1,
    the first sample's (see `assemble_samples` for all of them)."""
    return assemble_samples(request, chunks)[0]


async def collect(engine: Engine, request: GenerateRequest) -> GenerateResult:
    """Run a request to completion and assemble its stream into one result."""
    return assemble_result(request, [chunk async for chunk in engine.generate(request)])
