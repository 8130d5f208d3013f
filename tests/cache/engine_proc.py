"""A fresh engine process on a shared Redis: `python -m tests.cache.engine_proc URL SALT`.

Builds the tiny seeded test model (same weights in every process), serves one long prompt
greedily through the Redis tier, and prints the tokens and counters as JSON."""

from __future__ import annotations

import asyncio
import json
import sys

import torch

from legato.engine_adapter.base import GenerateRequest, SamplingParams, collect
from legato.engine_adapter.torch import build_core
from legato.engine_adapter.torch.engine import TorchEngine
from tests.tiny_model import TINY

PROMPT = tuple((i * 37 + 11) % 250 for i in range(400))


async def main(url: str, salt: str) -> None:
    torch.set_num_threads(1)
    core = build_core(
        model_config=TINY,
        num_blocks=64,
        max_num_batched_tokens=64,
        redis_url=url,
        redis_chunk_blocks=4,
        redis_op_timeout_s=1.0,
    )
    async with TorchEngine(core) as engine:
        req = GenerateRequest("long", PROMPT, SamplingParams(max_tokens=6), cache_salt=salt or None)
        result = await collect(engine, req)
        stats = await engine.stats()
        tiers = core.tiers
        assert tiers is not None and tiers.redis is not None
        tiers.flush()
        print(
            json.dumps(
                {
                    "tokens": list(result.token_ids),
                    "cached_tokens": result.cached_tokens,
                    "tier_loaded_tokens": stats.tier_loaded_tokens,
                    "computed_prompt_tokens": stats.prompt_tokens - stats.prefix_hit_tokens,
                    "redis_hit_chunks": tiers.redis.stats.hit_chunks,
                    "redis_put_chunks": tiers.redis.stats.put_chunks,
                }
            )
        )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
