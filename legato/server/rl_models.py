"""Request and response models of the rollout API (`/v1/rollouts`, `routes_rl.py`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from legato.engine_adapter import fields as f
from legato.server.proxy_models import MAX_ID_LEN


class _Strict(BaseModel):
    # an unknown field is a 400 naming it; no coercion (`true` is no token id); the ranges are
    # the shared fields' (`legato.engine_adapter.fields`)
    model_config = f.STRICT_REQUEST


class RLSampling(_Strict):
    max_tokens: f.TokenCount = Field(default=64, description="Model tokens this turn may add at most.")
    temperature: f.Temperature = 1.0
    top_p: f.TopP = 1.0
    top_k: Annotated[int, Field(ge=0, le=f.I32_MAX), f.INTEGRAL] = Field(
        default=0, description="0 disables top-k."
    )
    seed: f.Seed | None = None
    stop_token_ids: f.StopTokenIds | None = None
    ignore_eos: bool = False
    top_logprobs: f.TopLogprobs = Field(default=0, description="Alternatives per token, besides its logprob.")


class CreateRollouts(_Strict):
    rollout_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_ID_LEN - 8,
        pattern=r"^[^:/]+$",
        description="Your id (the program id); with n > 1 the samples are `{rollout_id}:{i}`.",
    )
    prompt_ids: list[f.TokenId] = Field(min_length=1)
    n: Annotated[int, Field(ge=1, le=64), f.INTEGRAL] = Field(
        default=1, description="GRPO group size: one prefill, forked KV."
    )
    sampling_params: RLSampling = Field(default_factory=RLSampling)


class TurnRequest(_Strict):
    env_ids: list[f.TokenId] = Field(
        default_factory=list, description="Tool / environment tokens appended first (loss mask 0)."
    )
    sampling_params: RLSampling = Field(default_factory=RLSampling)


class TurnOut(BaseModel):
    rollout_id: str
    token_ids: list[int]
    logprobs: list[float]
    # per token, its top candidates as [token id, logprob] pairs (a list, not a tuple: OpenAPI
    # 3.1 tools reject the tuple schema FastAPI writes for response models)
    top_logprobs: list[list[list[int | float]]] | None = None
    weight_versions: list[str | None] = Field(description="The weight version of each token.")
    weight_version: str | None = Field(description="The version of the turn's last token.")
    finish_reason: str
    cached_tokens: int
    num_turns: int


class RolloutOut(BaseModel):
    rollout_id: str
    group_id: str | None
    status: str = Field(description="new | running | idle | aborted")
    prompt_ids: list[int]
    response_ids: list[int]
    response_mask: list[int] = Field(description="1: model token, 0: tool / environment token.")
    response_logprobs: list[float]
    weight_versions: list[str | None]
    finish_reasons: list[str]
    num_turns: int


class CreatedRollouts(BaseModel):
    group_id: str
    turns: list[TurnOut]
