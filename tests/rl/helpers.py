"""Shared by the RL tests: the served engine's model, dense recomputes, weight uploads."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import torch

from legato.engine_adapter.torch import TorchEngine
from legato.engine_adapter.torch.weight_sync import MSGPACK_CONTENT_TYPE, encode_tensors
from legato.rl.train import token_logprobs
from legato.server.state import ServerState

# A context long enough that a call cut by an abort is, by a wide margin, cut mid-generation:
# an abort posted once decoding is seen lands within tens of steps, thousands remain.
LONG_CONTEXT = 8192


def engine_of(state: ServerState) -> TorchEngine:
    engine = state.engine
    assert isinstance(engine, TorchEngine)
    return engine


async def until_decoding(engine: TorchEngine, generated_before: int, timeout_s: float = 60.0) -> None:
    """Wait until the engine runs one request and has decoded tokens since its counter read
    `generated_before`: an abort sent now lands mid-generation, not before the call arrived."""
    with anyio.fail_after(timeout_s):
        while True:
            stats = await engine.stats()
            if stats.running == 1 and stats.generated_tokens >= generated_before + 2:
                return
            await anyio.sleep(0.005)


def dense_logprobs(state: ServerState, ids: list[int], start: int) -> list[float]:
    """The logprobs of ids[start:] by a full forward pass under the weights served now."""
    with torch.inference_mode():
        return token_logprobs(engine_of(state).core.model, ids, start).tolist()


def shifted_weights(state: ServerState, scale: float = 0.2, seed: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    model = engine_of(state).core.model
    return {k: v + scale * torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}


def upload(client: httpx.Client, tensors: dict[str, torch.Tensor], version: Any = None) -> httpx.Response:
    return client.post(
        "/update_weights",
        content=encode_tensors(tensors, version),
        headers={"Content-Type": MSGPACK_CONTENT_TYPE},
    )
