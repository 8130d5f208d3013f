"""GRPO on a toy multi-turn tool task, with every rollout and weight sync through `legato serve`.

The task (token level, byte tokenizer): the prompt asks for a value. Turn 1: the model should
call the tool, a capital letter (its name). The environment then appends the tool's answer, `=`
and a digit that depends on the prompt (loss mask 0), or `?` when no tool was called. Turn 2: the
model should answer with a digit, best the tool's. Rewards: 0.5 for the call, 0.75 for a digit
after it, 1.0 for the tool's digit. The seeded random model calls the tool a few percent of the
time, so GRPO groups see rewards from the first iteration on.

Each iteration: rollouts of every prompt as a GRPO group (`POST /v1/rollouts` with `n`: one
prefill, forked KV; then `POST /v1/rollouts/{id}:{i}/turns` with the tool tokens), rewards,
group-normalised advantages, one policy-gradient step in torch on the trainer's copy of the
model (masked to model tokens, logprobs recomputed with gradients), then weight sync through the
API: `/pause?mode=keep` -> `/update_weights` (msgpack tensors) -> `/resume`. The example checks
that the trainer's recomputed logprobs equal the ones the server sampled with.

    .venv/bin/python examples/rl_grpo.py --iterations 8
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
import httpx
import torch
import uvicorn

from legato.engine_adapter.torch import ModelConfig, load_engine
from legato.engine_adapter.torch.checkpoint import build_default_model
from legato.engine_adapter.torch.model import LlamaForCausalLM
from legato.engine_adapter.torch.weight_sync import MSGPACK_CONTENT_TYPE, encode_tensors
from legato.rl.train import token_logprobs, trainable_tensors
from legato.server.app import create_app
from legato.server.config import ServerConfig
from legato.server.state import build_state
from legato.tools.registry import ToolRegistry

MODEL = ModelConfig(  # small enough for a few seconds per iteration on 2 CPU cores
    vocab_size=264,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    bos_token_id=256,
    eos_token_id=257,
)
SEED = 0


@dataclass(frozen=True)
class Settings:
    iterations: int = 8
    prompts: int = 4  # per iteration
    group: int = 8  # GRPO group size (samples per prompt)
    lr: float = 1e-3
    policy: str = "legato"


@dataclass(slots=True)
class Sample:
    prompt_ids: list[int]
    response_ids: list[int]
    mask: list[int]
    logprobs: list[float]
    reward: float
    advantage: float = 0.0


def task(i: int) -> tuple[list[int], int]:
    """Prompt `i` and the byte its tool answers (a digit that depends on the prompt)."""
    text = f"Q{i % 10}?"
    return [MODEL.bos_token_id, *text.encode()], ord("0") + (i * 7) % 10


def is_call(token: int) -> bool:
    """A tool call is any capital letter (the tool's name); everything else is a plain answer."""
    return ord("A") <= token <= ord("Z")


def reward(first: int, second: int, answer: int) -> float:
    """Half for calling the tool; more for then answering with a digit, full marks for the
    tool's own digit."""
    if not is_call(first):
        return 0.0
    if not ord("0") <= second <= ord("9"):
        return 0.5
    return 0.75 if second != answer else 1.0


async def rollout_group(
    c: httpx.AsyncClient, prompt_ids: list[int], answer: int, s: Settings
) -> list[Sample]:
    sampling = {"max_tokens": 1, "temperature": 1.0}
    group = {"prompt_ids": prompt_ids, "n": s.group, "sampling_params": sampling}
    r = await c.post("/v1/rollouts", json=group)
    r.raise_for_status()
    first = r.json()["turns"]

    async def second_turn(turn: dict[str, Any]) -> Sample:
        rid = turn["rollout_id"]
        called = is_call(turn["token_ids"][0])
        tool = [ord("="), answer] if called else [ord("?")]
        t = await c.post(f"/v1/rollouts/{rid}/turns", json={"env_ids": tool, "sampling_params": sampling})
        t.raise_for_status()
        done = (await c.post(f"/v1/rollouts/{rid}/finish")).json()  # the full record, mask included
        score = reward(turn["token_ids"][0], t.json()["token_ids"][0], answer)
        ids, mask, lps = done["response_ids"], done["response_mask"], done["response_logprobs"]
        return Sample(prompt_ids, ids, mask, lps, score)

    samples: list[Sample] = [Sample([], [], [], [], 0.0)] * len(first)

    async def run(i: int, turn: dict[str, Any]) -> None:
        samples[i] = await second_turn(turn)

    async with anyio.create_task_group() as tg:
        for i, turn in enumerate(first):
            tg.start_soon(run, i, turn)
    rewards = [x.reward for x in samples]
    mean, std = statistics.fmean(rewards), statistics.pstdev(rewards)
    for x in samples:  # GRPO: the group is the baseline
        x.advantage = (x.reward - mean) / (std + 1e-6)
    return samples


def policy_step(model: LlamaForCausalLM, opt: torch.optim.Optimizer, samples: list[Sample]) -> float:
    """One REINFORCE step with group advantages over the model tokens (mask 1). Returns the
    largest gap between the trainer's logprobs and the server's (both under the same weights)."""
    opt.zero_grad()
    gap = 0.0
    total = torch.zeros(())
    for x in samples:
        start = len(x.prompt_ids)
        logp = token_logprobs(model, x.prompt_ids + x.response_ids, start)
        mask = torch.tensor(x.mask, dtype=logp.dtype)
        served = torch.tensor(x.logprobs, dtype=logp.dtype)
        gap = max(gap, float(((logp.detach() - served).abs() * mask).max()))
        total = total - x.advantage * (logp * mask).sum() / mask.sum()
    loss = total / len(samples)
    loss.backward()  # type: ignore[no-untyped-call]
    opt.step()
    return gap


async def sync_weights(c: httpx.AsyncClient, model: LlamaForCausalLM, version: int) -> None:
    """pause(keep) -> update -> resume, as SkyRL orders it."""
    (await c.post("/pause", params={"mode": "keep"})).raise_for_status()
    state = {k: v.detach() for k, v in model.state_dict().items()}
    body = encode_tensors(state, version)
    r = await c.post("/update_weights", content=body, headers={"Content-Type": MSGPACK_CONTENT_TYPE})
    r.raise_for_status()
    (await c.post("/resume")).raise_for_status()


async def rollouts(c: httpx.AsyncClient, groups: list[tuple[list[int], int]], s: Settings) -> list[Sample]:
    """Every group of the iteration at once (the server batches and schedules them)."""
    batches: list[list[Sample]] = [[] for _ in groups]

    async def run(j: int, prompt: list[int], answer: int) -> None:
        batches[j] = await rollout_group(c, prompt, answer, s)

    async with anyio.create_task_group() as tg:
        for j, (prompt, answer) in enumerate(groups):
            tg.start_soon(run, j, prompt, answer)
    return [x for b in batches for x in b]


async def train(url: str, s: Settings, log: bool = True) -> list[float]:
    """Run the loop against `legato serve` at `url`; returns the mean reward of every iteration."""
    torch.manual_seed(SEED)
    model = build_default_model(SEED, MODEL)
    opt = torch.optim.Adam(trainable_tensors(model), lr=s.lr)
    means: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        await sync_weights(c, model, 0)  # the server serves exactly the trainer's weights
        for it in range(s.iterations):
            started = time.perf_counter()
            groups = [task(it * s.prompts + j) for j in range(s.prompts)]
            samples = await rollouts(c, groups, s)
            means.append(statistics.fmean(x.reward for x in samples))
            gap = policy_step(model, opt, samples)
            if gap > 1e-3:
                raise RuntimeError(f"trainer and server logprobs differ by {gap:.2e}")
            await sync_weights(c, model, it + 1)
            if log:
                print(
                    json.dumps(
                        {
                            "iteration": it,
                            "mean_reward": round(means[-1], 4),
                            "logprob_gap": gap,
                            "seconds": round(time.perf_counter() - started, 2),
                        }
                    ),
                    flush=True,
                )
    return means


@contextmanager
def serve(policy: str) -> Iterator[str]:
    """`legato serve`'s app (tiny seeded torch engine, `policy`) on a free local port."""
    with tempfile.TemporaryDirectory() as tmp:
        config = replace(ServerConfig(db_path=Path(tmp) / "rl.db"), policy=policy)
        engine = load_engine(model_config=MODEL, seed=SEED, num_blocks=512, max_num_batched_tokens=512)
        app = create_app(build_state(config, engine, ToolRegistry()))
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("legato serve did not start")
            time.sleep(0.01)
        try:
            yield f"http://127.0.0.1:{sock.getsockname()[1]}"
        finally:
            server.should_exit = True
            thread.join(timeout=20)
            sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=Settings.iterations)
    parser.add_argument("--policy", default=Settings.policy)
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = Settings(iterations=args.iterations, policy=args.policy)
    with serve(settings.policy) as url:
        means = anyio.run(train, url, settings)
    print(f"mean reward: first {means[0]:.3f}, last {means[-1]:.3f}")


if __name__ == "__main__":
    main()
