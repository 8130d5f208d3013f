"""`VerlServerManager`: verl's agent-loop server manager over `legato serve`.

verl's agent loops call `server_manager.generate(request_id, *, prompt_ids, sampling_params)` and
read a `TokenOutput(token_ids, log_probs, stop_reason, num_preempted)` (verl
`verl/workers/rollout/replica.py`; stop reason "completed" or "aborted"). Calls with one
`request_id` are sticky in verl; here the request id is the Legato program id (sent as
`X-Session-ID`), so the scheduler keeps the rollout's KV on one replica between turns. Each
answer also carries the weight version of its tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

SESSION_HEADER = "X-Session-ID"
# Sampling keys verl's servers read, mapped to vLLM's token API (which `legato serve` takes).
_PASSED = ("temperature", "top_p", "top_k", "seed", "stop", "stop_token_ids", "ignore_eos", "max_tokens")


@dataclass(frozen=True, slots=True)
class TokenOutput:
    """verl's `TokenOutput` fields, plus the weight versions of the tokens."""

    token_ids: list[int]
    log_probs: list[float] | None = None
    stop_reason: str | None = None  # "completed" or "aborted", as verl spells them
    num_preempted: int | None = None
    routed_experts: Any = None
    weight_version: str | None = None


def vllm_sampling(sampling_params: Mapping[str, Any], prompt_len: int, max_model_len: int) -> dict[str, Any]:
    """verl's `sampling_params` dict as the token API's: `logprobs` (bool in verl) becomes 0
    alternatives, `max_tokens` defaults to the rest of the context as verl's servers do, and a
    `repetition_penalty` other than 1 is refused (the engine has none)."""
    out = {k: sampling_params[k] for k in _PASSED if k in sampling_params}
    rp = sampling_params.get("repetition_penalty", 1.0)
    if rp != 1.0:
        raise ValueError(f"repetition_penalty {rp} is not supported (use 1.0)")
    unknown = set(sampling_params) - {*_PASSED, "logprobs", "repetition_penalty"}
    if unknown:
        raise ValueError(f"unsupported sampling params: {sorted(unknown)}")
    if sampling_params.get("logprobs"):
        out["logprobs"] = 0
    out.setdefault("max_tokens", max(1, max_model_len - prompt_len))
    return out


class VerlServerManager:
    """Drop-in for verl's `AsyncLLMServerManager` in an agent loop, backed by `legato serve`."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        max_model_len: int = 4096,
        timeout_s: float = 600.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = client or httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout_s)
        self._own_client = client is None
        self.max_model_len = max_model_len

    async def generate(
        self,
        request_id: str,
        *,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        image_data: list[Any] | None = None,
        video_data: list[Any] | None = None,
    ) -> TokenOutput:
        if image_data or video_data:
            raise ValueError("image_data / video_data: Legato's engines are text-only")
        body = {
            "token_ids": list(prompt_ids),
            "sampling_params": vllm_sampling(sampling_params, len(prompt_ids), self.max_model_len),
        }
        resp = await self._client.post(
            "/inference/v1/generate", json=body, headers={SESSION_HEADER: request_id}
        )
        resp.raise_for_status()
        choice = resp.json()["choices"][0]
        lps = choice.get("logprobs")
        log_probs = [c["logprob"] for c in lps["content"]] if lps else None
        reason = choice.get("finish_reason")
        return TokenOutput(
            token_ids=list(choice["token_ids"]),
            log_probs=log_probs,
            stop_reason="aborted" if reason == "abort" else "completed",
            num_preempted=0,
            weight_version=choice.get("weight_version"),
        )

    async def release(self, request_id: str) -> None:
        """End the rollout's program (its KV is no longer kept); unknown ids are ignored."""
        resp = await self._client.post("/finish_session", params={"session_id": request_id})
        if resp.status_code != 404:
            resp.raise_for_status()

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()
