"""Drive `legato serve` with SkyRL's own `RemoteInferenceClient` (skyrl 0.3.0, which needs Python
3.12): run in the test-only environment `make skyrl-env` builds, by `test_skyrl_client.py`.

Usage: skyrl_driver.py URL MODEL CHECKPOINT_DIR PROMPT_JSON. Runs SkyRL's weight-sync order,
generate -> pause(keep) -> update_named_weights (a checkpoint directory) -> resume -> generate,
then the rest of its control plane, and prints what it saw as one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from skyrl.backends.skyrl_train.inference_servers.remote_inference_client import (
    PauseMode,
    RemoteInferenceClient,
)

KEPT = ("response_ids", "response_logprobs", "stop_reasons")


async def main(url: str, model: str, checkpoint: str, prompt: list[int]) -> dict[str, Any]:
    client = RemoteInferenceClient(proxy_url=url, server_urls=[url], data_parallel_size=1, model_name=model)
    sampling = {"max_tokens": 10, "temperature": 0.0, "logprobs": 0}
    out: dict[str, Any] = {}
    async with client:
        batch = {"prompt_token_ids": [prompt, prompt], "sampling_params": sampling}
        batch["session_ids"] = ["t-1", "t-2"]
        before = await client.generate(batch)  # type: ignore[arg-type]
        out["before"] = {k: before[k] for k in (*KEPT, "responses")}
        out["pause"] = await client.pause(mode=PauseMode.KEEP)
        out["update"] = await client.update_named_weights({"model_path": checkpoint})
        out["resume"] = await client.resume()
        client.increment_weight_version()
        batch["session_ids"] = ["t-3", "t-4"]
        after = await client.generate(batch)  # type: ignore[arg-type]
        out["after"] = {k: after[k] for k in KEPT}
        out["tokenize"] = await client.tokenize(["hello"])
        out["reset_prefix_cache"] = await client.reset_prefix_cache()
        out["sleep"] = await client.sleep(level=2)
        out["wake_up"] = await client.wake_up()
        out["world_size"] = list(await client.get_world_size())
        await client.finish_session("t-1")  # best effort: SkyRL logs a failure, never raises
    return out


if __name__ == "__main__":
    url, model, checkpoint, prompt = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    print(json.dumps(asyncio.run(main(url, model, checkpoint, prompt)), default=str))
