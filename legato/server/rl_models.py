"""Request and response models of the rollout API (`/v1/rollouts`, `routes_rl.py`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from legato.server.proxy_models import MAX_ID_LEN


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is a 400 naming it


class RLSampling(_Strict):
    max_tokens: int = Field(default=64, ge=1, description="Model tokens this turn may add at most.")
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=0, description="0 disables top-k.")
    seed: int | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    top_logprobs: int = Field(default=0, ge=0, description="Alternatives per token, besides its logprob.")


class CreateRollouts(_Strict):
    rollout_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_ID_LEN - 8,
        pattern=r"^[^:/]+$",
        description="Your id (the program id); with n > 1 the samples are `{rollout_id}:{i}`.",
    )
    prompt_ids: list[int] = Field(min_length=1)
    n: int = Field(default=1, ge=1, le=64, description="GRPO group size: one prefill, forked KV.")
    sampling_params: RLSampling = Field(default_factory=RLSampling)


class TurnRequest(_Strict):
    env_ids: list[int] = Field(
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
