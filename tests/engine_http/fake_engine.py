"""A tiny deterministic `Engine` for the server and HTTP-engine contract tests.

It is not a model: the next token is a fixed function of the last few, so every test knows
exactly what greedy output to expect, and it records what each request carried (priority,
cache_salt, session) and which requests were aborted, so pass-through and disconnect handling
can be asserted. Prefix caching is imitated at 16-token block granularity.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import anyio

from legato.engine_adapter.base import (
    Capability,
    EngineCapacity,
    EngineError,
    GenerateRequest,
    TokenChunk,
)

BLOCK = 16
EOS = 256
FAIL_TOKEN = 255  # a prompt starting with it fails after two tokens


class FakeTokenizer:
    """Bytes are tokens 0..255; 256 is end-of-sequence; 257..259 are chat role markers."""

    @property
    def eos_token_id(self) -> int:
        return EOS

    @property
    def vocab_size(self) -> int:
        return 260

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, token_ids: Sequence[int]) -> str:
        return bytes(t for t in token_ids if t < 256).decode("utf-8", "replace")

    def apply_chat_template(
        self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True
    ) -> list[int]:
        roles = {"system": 257, "user": 258, "assistant": 259}
        out: list[int] = []
        for message in messages:
            out.append(roles.get(message["role"], 258))
            out.extend(self.encode(message["content"]))
        if add_generation_prompt:
            out.append(259)
        return out


def next_token(context: Sequence[int]) -> int:
    """Lower-case letters only, so decoded text is easy to read and stop strings are simple."""
    return 97 + (sum(context[-3:]) * 7 + len(context)) % 26


class FakeEngine:
    model_name = "fake-model"
    max_model_len = 512

    def __init__(self, token_delay_s: float = 0.0) -> None:
        self.token_delay_s = token_delay_s
        self.requests: list[GenerateRequest] = []
        self.aborted: set[str] = set()
        self._abort_flags: set[str] = set()
        self._cached_blocks: set[tuple[str | None, tuple[int, ...]]] = set()

    @property
    def capabilities(self) -> frozenset[Capability]:
        return frozenset({Capability.LOGPROBS, Capability.PRIORITY, Capability.PREFIX_QUERY})

    @property
    def tokenizer(self) -> FakeTokenizer:
        return FakeTokenizer()

    def _cached(self, prompt: Sequence[int], salt: str | None) -> int:
        n = 0
        while n + BLOCK <= len(prompt) and (salt, tuple(prompt[: n + BLOCK])) in self._cached_blocks:
            n += BLOCK
        return n

    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenChunk]:
        if len(request.prompt_token_ids) > 400:
            raise EngineError(
                f"prompt of {len(request.prompt_token_ids)} tokens exceeds the 400 this engine takes"
            )
        self.requests.append(request)
        prompt = request.prompt_token_ids
        cached = self._cached(prompt, request.cache_salt)
        for end in range(BLOCK, len(prompt) + 1, BLOCK):
            self._cached_blocks.add((request.cache_salt, tuple(prompt[:end])))
        context = list(prompt)
        text_so_far = ""
        sp = request.sampling
        for i in range(sp.max_tokens):
            if self.token_delay_s:
                await anyio.sleep(self.token_delay_s)
            if request.request_id in self._abort_flags:
                yield TokenChunk(
                    token_ids=(),
                    finished=True,
                    finish_reason="abort",
                    prompt_tokens=len(prompt),
                    cached_tokens=cached,
                )
                return
            if prompt[0] == FAIL_TOKEN and i == 2:
                raise EngineError("the fake engine failed mid-request (as asked by its prompt)")
            token = next_token(context)
            context.append(token)
            text = chr(token)
            text_so_far += text
            hit = next((s for s in sp.stop if s in text_so_far), None)
            last = i == sp.max_tokens - 1
            if hit is not None:
                cut = text_so_far.index(hit)
                text = text[: max(0, len(text) - (len(text_so_far) - cut))]
            yield TokenChunk(
                token_ids=(token,),
                text=text,
                logprobs=(-0.25 - 0.01 * i,) if sp.logprobs else None,
                finished=hit is not None or last,
                finish_reason="stop" if hit is not None else ("length" if last else None),
                prompt_tokens=len(prompt),
                cached_tokens=cached,
            )
            if hit is not None:
                return

    async def capacity(self) -> EngineCapacity:
        return EngineCapacity(block_size=BLOCK, total_blocks=100, free_blocks=75)

    async def cached_prefix_tokens(self, token_ids: Sequence[int], cache_salt: str | None = None) -> int:
        return self._cached(token_ids, cache_salt)

    async def abort(self, request_id: str) -> None:
        self._abort_flags.add(request_id)
        self.aborted.add(request_id)

    async def close(self) -> None:
        return None


def expected_greedy(prompt: Sequence[int], max_tokens: int) -> list[int]:
    context = list(prompt)
    for _ in range(max_tokens):
        context.append(next_token(context))
    return context[len(prompt) :]
