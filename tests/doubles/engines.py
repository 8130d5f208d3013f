"""A deterministic, fast test-double `Engine` (and its byte-level tokenizer).

The reply to a prompt is a pure function of the prompt text (`responder`), so tests can compute
expected outputs. Tokens stream one chunk per `chunk_tokens` tokens with optional latency, so
thousands of concurrent calls finish quickly and cancellation can interrupt a call mid-stream.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable, Sequence

import anyio

from legato.engine_adapter.base import (
    Capability,
    EngineCapacity,
    EngineError,
    GenerateRequest,
    TokenChunk,
)

_OFFSET = 3  # ids 0..2 are special: pad, bos, eos


class ByteTokenizer:
    """UTF-8 bytes shifted by 3; 0 = pad, 1 = bos, 2 = eos."""

    eos_token_id = 2
    vocab_size = 256 + _OFFSET

    def encode(self, text: str) -> list[int]:
        return [b + _OFFSET for b in text.encode("utf-8")]

    def decode(self, token_ids: Sequence[int]) -> str:
        return bytes(t - _OFFSET for t in token_ids if t >= _OFFSET).decode("utf-8", errors="replace")

    def apply_chat_template(
        self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True
    ) -> list[int]:
        text = "".join(f"<|{m['role']}|>{m['content']}\n" for m in messages)
        return self.encode(text + ("<|assistant|>" if add_generation_prompt else ""))


def digest_reply(prompt: str) -> str:
    """Default reply: a short digest of the prompt, so different prompts get different replies."""
    return "r" + hashlib.sha256(prompt.encode()).hexdigest()[:8]


class FakeEngine:
    """Implements the full `Engine` protocol (plus call accounting for assertions)."""

    def __init__(
        self,
        responder: Callable[[str], str] = digest_reply,
        *,
        token_latency_s: float = 0.0,
        first_token_latency_s: float = 0.0,
        chunk_tokens: int = 16,
        max_prompt_tokens: int = 1 << 20,
        model_name: str = "fake",
        hold_if: Callable[[str], bool] | None = None,
    ) -> None:
        """`hold_if(prompt)`: requests it accepts wait for `release()` before streaming (tests use it
        to park runs mid-flight)."""
        self._tokenizer = ByteTokenizer()
        self.responder = responder
        self.token_latency_s = token_latency_s
        self.first_token_latency_s = first_token_latency_s
        self.chunk_tokens = chunk_tokens
        self.max_prompt_tokens = max_prompt_tokens
        self._model_name = model_name
        self.requests: list[GenerateRequest] = []
        self.active = 0
        self.peak_active = 0
        self.aborted: set[str] = set()
        self.closed = False
        self.hold_if = hold_if
        self._released = anyio.Event()
        self.held = 0

    def release(self) -> None:
        self._released.set()

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def capabilities(self) -> frozenset[Capability]:
        return frozenset({Capability.LOGPROBS})

    @property
    def tokenizer(self) -> ByteTokenizer:
        return self._tokenizer

    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenChunk]:
        if self.closed:
            raise EngineError("engine is closed")
        if len(request.prompt_token_ids) > self.max_prompt_tokens:
            raise EngineError(
                f"prompt of {len(request.prompt_token_ids)} tokens exceeds {self.max_prompt_tokens}"
            )
        self.requests.append(request)
        self.active += 1
        self.peak_active = max(self.peak_active, self.active)
        try:
            prompt = self._tokenizer.decode(request.prompt_token_ids)
            if self.hold_if is not None and self.hold_if(prompt):
                self.held += 1
                await self._released.wait()
            text = self.responder(prompt)
            for stop in request.sampling.stop:
                if stop and stop in text:
                    text = text[: text.index(stop)]
            ids = self._tokenizer.encode(text)[: request.sampling.max_tokens]
            reason = "length" if len(ids) < len(self._tokenizer.encode(text)) else "stop"
            if self.first_token_latency_s:
                await anyio.sleep(self.first_token_latency_s)
            n_prompt = len(request.prompt_token_ids)
            if not ids:
                yield TokenChunk((), "", None, True, reason, n_prompt, 0)
                return
            for start in range(0, len(ids), self.chunk_tokens):
                if request.request_id in self.aborted:
                    yield TokenChunk((), "", None, True, "abort", n_prompt, 0)
                    return
                piece = tuple(ids[start : start + self.chunk_tokens])
                if self.token_latency_s:
                    await anyio.sleep(self.token_latency_s * len(piece))
                last = start + self.chunk_tokens >= len(ids)
                logprobs = (0.0,) * len(piece) if request.sampling.logprobs else None
                yield TokenChunk(
                    piece,
                    self._tokenizer.decode(piece),
                    logprobs,
                    last,
                    reason if last else None,
                    n_prompt,
                    0,
                )
        finally:
            self.active -= 1

    async def capacity(self) -> EngineCapacity:
        return EngineCapacity(block_size=16, total_blocks=1024, free_blocks=1024)

    async def cached_prefix_tokens(self, token_ids: Sequence[int], cache_salt: str | None = None) -> int:
        return 0

    async def abort(self, request_id: str) -> None:
        self.aborted.add(request_id)

    async def close(self) -> None:
        self.closed = True


def make_engine() -> FakeEngine:
    """Factory for `legato run FILE --engine tests.doubles.engines:make_engine`."""
    return FakeEngine()
