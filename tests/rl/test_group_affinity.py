"""RL-group affinity across replicas: `legato serve --policy legato` with two torch replicas (a
real subprocess, real HTTP). Several GRPO groups start at once, then every sample runs a tool
turn at once: each group's rollouts all run on the replica its first turn ran on (the
`X-Legato-Replica` of every answer), both replicas serve groups, and the engines' own counters
(`/metrics`) show each group's prompt computed once in all — its samples forked it, and their
later turns found it in the prefix cache of the replica they were sent to."""

from __future__ import annotations

import random
from pathlib import Path

import anyio
import httpx

from tests.server.launching import legato_serve
from tests.server.proxy_harness import metric

GROUPS, N = 4, 4
PROMPT = 256  # tokens per group prompt (16 blocks): large next to what a turn adds
ENV = 8  # tool tokens appended before the second turn
MAX_TOKENS = 4
ARGS = ["--policy", "legato", *("--engine", "tests.server.serving:tiny_engine") * 2]


async def _run_groups(url: str) -> dict[str, list[str]]:
    """group id -> the replica of its first turn, then of each sample's second turn."""
    rng = random.Random(5)
    sampling = {"max_tokens": MAX_TOKENS, "temperature": 1.0, "ignore_eos": True, "seed": 1}
    placed: dict[str, list[str]] = {}
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:

        async def group(g: int) -> None:
            prompt = [rng.randrange(32, 127) for _ in range(PROMPT)]
            body = {"rollout_id": f"g{g}", "prompt_ids": prompt, "n": N, "sampling_params": sampling}
            r = await c.post("/v1/rollouts", json=body)
            assert r.status_code == 200, r.text
            placed[f"g{g}"] = [r.headers["x-legato-replica"]]
            samples = [t["rollout_id"] for t in r.json()["turns"]]
            assert len(samples) == N

            async def turn(rid: str) -> None:
                env = [rng.randrange(32, 127) for _ in range(ENV)]
                body = {"env_ids": env, "sampling_params": sampling}
                t = await c.post(f"/v1/rollouts/{rid}/turns", json=body)
                assert t.status_code == 200, t.text
                placed[f"g{g}"].append(t.headers["x-legato-replica"])

            async with anyio.create_task_group() as tg:
                for rid in samples:
                    tg.start_soon(turn, rid)
            for rid in samples:
                assert (await c.post(f"/v1/rollouts/{rid}/finish")).status_code == 200

        async with anyio.create_task_group() as tg:
            for g in range(GROUPS):
                tg.start_soon(group, g)
    return placed


def test_a_groups_rollouts_share_one_replica_and_one_prefill(tmp_path: Path) -> None:
    with legato_serve(ARGS, tmp_path, "groups") as url:
        placed = anyio.run(_run_groups, url)
        text = httpx.get(f"{url}/metrics", timeout=30).text
    for g, replicas in placed.items():
        assert len(replicas) == 1 + N
        assert len(set(replicas)) == 1, f"group {g} ran on replicas {replicas}"
    assert {r[0] for r in placed.values()} == {"0", "1"}, placed  # both replicas serve groups
    prefill = [metric(text, "legato_engine_prefill_tokens_total", replica=r) for r in ("0", "1")]
    forked = metric(text, "legato_engine_forked_samples_total")
    hits = metric(text, "legato_cache_hit_tokens_total", tier="device")
    assert forked == GROUPS * (N - 1)  # one prefill per group, the other samples forked from it
    # Every prompt computed once: the groups' prompts, plus what each second turn adds (its tool
    # tokens, its first turn's output, and at most the partly filled block those sit in).
    per_turn = ENV + MAX_TOKENS + 16
    assert GROUPS * PROMPT <= sum(prefill) <= GROUPS * PROMPT + GROUPS * N * per_turn, prefill
    assert min(prefill) >= PROMPT  # both replicas computed some group's prompt
    assert hits >= GROUPS * N * PROMPT  # every second turn found its group's prompt cached
