"""What the torch engine checks of a request before queueing it: a non-empty prompt and logit
bias inside the vocabulary, and prompt + max_tokens within the model's length and the KV pool.
Pure (no engine state), so `EngineCore.validate` (core.py) may run it from any thread.
"""

from __future__ import annotations

from legato.engine_adapter.base import EngineError, GenerateRequest


def validate_request(
    request: GenerateRequest, vocab: int, max_model_len: int, block_size: int, num_blocks: int
) -> None:
    """Raise EngineError for a request an engine with these limits can never serve."""
    n = len(request.prompt_token_ids)
    if n == 0:
        raise EngineError(f"request {request.request_id!r}: prompt_token_ids is empty")
    vocab = vocab
    for i, t in enumerate(request.prompt_token_ids):
        if not 0 <= t < vocab:
            raise EngineError(
                f"request {request.request_id!r}: prompt_token_ids[{i}] = {t} is outside the vocabulary "
                f"[0, {vocab})"
            )
    bad = [t for t, _ in request.sampling.logit_bias if not 0 <= t < vocab]
    if bad:
        raise EngineError(
            f"request {request.request_id!r}: logit_bias token ids {bad[:5]} are outside the "
            f"vocabulary [0, {vocab})"
        )
    total = n + request.sampling.max_tokens
    if total > max_model_len:
        raise EngineError(
            f"request {request.request_id!r}: prompt ({n} tokens) + max_tokens "
            f"({request.sampling.max_tokens}) = {total} exceeds the model's maximum length "
            f"{max_model_len}; shorten the prompt or lower max_tokens"
        )
    blocks = -(-total // block_size)
    if blocks > num_blocks:
        raise EngineError(
            f"request {request.request_id!r}: prompt + max_tokens = {total} tokens needs {blocks} "
            f"KV blocks "
            f"but the cache has only {num_blocks}; lower max_tokens or raise num_blocks"
        )
