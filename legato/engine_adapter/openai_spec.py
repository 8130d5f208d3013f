"""The `speculative` request option and the `usage.speculative` answer field (Legato extensions
to OpenAI's API; vLLM configures speculation per server, not per request).

Kept beside `openai_api.py` (which imports them) so the request models stay one concern per
file. Out-of-range values are refused by validation: a 400 naming the field."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from legato.spec.adaptive import MAX_DRAFT_LEN

# `legato.spec.drafter.ENGINE_DRAFTERS` and "none" (a test keeps the two lists equal)
DrafterName = Literal["suffix", "suffix-local", "suffix-agent", "ngram", "draft-model", "none"]


class SpeculativeOptions(BaseModel):
    """Speculative decoding for this request (engines that announce it; others answer 400)."""

    model_config = ConfigDict(extra="forbid")

    drafter: DrafterName = Field(
        default="suffix",
        description="suffix (program context + earlier outputs), its two halves alone, ngram (prompt "
        "lookup), draft-model (the engine's draft model, where it was started with one), or none "
        "(this request does not speculate).",
    )
    num_speculative_tokens: int = Field(
        default=4,
        ge=0,
        le=MAX_DRAFT_LEN,
        description="Longest draft one verify step checks (the engine drafts less when it does not pay).",
    )


class SpeculativeUsage(BaseModel):
    """Tokens the engine drafted for this request, and how many of them verification accepted
    (accepted tokens are part of `completion_tokens`; the output is the same without them)."""

    model_config = ConfigDict(extra="allow")

    drafted_tokens: int = 0
    accepted_tokens: int = 0
