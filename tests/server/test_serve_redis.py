"""`legato serve --kv-redis-url URL` (a test-started redis-server): a second server process on the
same Redis loads, from Redis, the prefix the first one computed (its /metrics count Redis hits),
and answers the same greedy tokens. A Redis that does not answer refuses the start in one line."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import redis
from openai import OpenAI

from tests.server.launching import legato_serve, save_tiny_checkpoint, serve_fails
from tests.server.proxy_harness import metric, scrape
from tests.server.serving import ROOT

PROMPT = "".join(f"Step {i}: the agent reads file src/module_{i}.py and runs its tests. " for i in range(12))


def _complete(url: str) -> tuple[str, int]:
    client = OpenAI(base_url=f"{url}/v1", api_key="EMPTY", max_retries=0, timeout=120)
    reply = client.completions.create(model="tiny-ckpt", prompt=PROMPT, max_tokens=4, temperature=0)
    assert reply.usage is not None
    return reply.choices[0].text, reply.usage.prompt_tokens


def _wait_for_kv_keys(url: str, timeout_s: float = 30.0) -> int:
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + timeout_s
    while not (keys := len(client.keys("legato:kv:*"))):
        assert time.monotonic() < deadline, "the first server wrote no KV chunk to Redis"
        time.sleep(0.1)
    return keys


def test_second_server_loads_the_prefix_the_first_computed(tmp_path: Path, redis_url: str) -> None:
    assert 512 < len(PROMPT) < 900  # two 256-token Redis chunks of the byte tokenizer, within 1024
    checkpoint = save_tiny_checkpoint(tmp_path)
    args = ["--engine", "torch", "--checkpoint", str(checkpoint), "--kv-redis-url", redis_url]
    with legato_serve(args, tmp_path, "first") as url:
        first, prompt_tokens = _complete(url)
        _wait_for_kv_keys(redis_url)
        assert metric(scrape(url), "legato_cache_hit_tokens_total", tier="redis") == 0
    with legato_serve(args, tmp_path, "second") as url:
        second, _ = _complete(url)
        text = scrape(url)
    loaded = metric(text, "legato_cache_hit_tokens_total", tier="redis")
    assert 256 <= loaded <= prompt_tokens
    assert second == first


def test_unreachable_redis_refuses_the_start() -> None:
    done = serve_fails(["--engine", "torch", "--kv-redis-url", "redis://127.0.0.1:9/0"])
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "--kv-redis-url redis://127.0.0.1:9/0: no Redis answers there" in done.stderr


def test_engine_serve_takes_the_same_tier_flags() -> None:
    cmd = [sys.executable, "-m", "legato.cli", "engine", "serve", "--port", "0"]
    done = subprocess.run(
        [*cmd, "--kv-host-gb", "0.01", "--kv-redis-url", "redis://127.0.0.1:9/0"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (
        "legato engine serve: --kv-redis-url redis://127.0.0.1:9/0: no Redis answers there "
        + done.stderr.strip().split("no Redis answers there ", 1)[1]
    )
