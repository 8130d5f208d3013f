"""`legato bench cache`: the KV tiers measured against their ceilings, in one run.

1. Throughput: real KV chunks (exported from the torch engine after a real prefill) put into and
   got from the Redis tier (encode + checksum + pipelined SET; pipelined GET + verify + decode),
   beside raw pipelined SET / GET of values of the same size on the same connection settings:
   raw Redis is the ceiling on this machine, so the tier's cost is the ratio.
2. TTFT of a long prefix on the torch engine: recompute vs load from the host tier vs load from
   Redis, each measured, beside what the cost model (`plan_load`, fed with the measured prefill
   cost and tier bandwidths) would choose, so the choice can be checked against the fastest.
"""

from __future__ import annotations

import shutil
import socket
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from legato.engine_adapter.base import GenerateRequest, KVBlock, SamplingParams


@dataclass(frozen=True, slots=True)
class CacheBenchConfig:
    redis_url: str | None = None
    prefix_tokens: int = 4000
    chunk_blocks: int = 16
    repeats: int = 5
    seed: int = 0
    passes: int = 4  # each throughput measurement moves the prefix's chunks this many times


@contextmanager
def redis_server(url: str | None, progress: Callable[[str], None]) -> Iterator[str]:
    """`url`, or a private redis-server subprocess on a free port for the run."""
    if url is not None:
        yield url
        return
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("no --redis-url given and redis-server is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    progress(f"starting redis-server on 127.0.0.1:{port}")
    args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import redis

        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def _ttft(core: Any, prompt: tuple[int, ...], preload: list[KVBlock], rid: str) -> float:
    start = time.perf_counter()
    core.add_request(GenerateRequest(rid, prompt, SamplingParams(max_tokens=1)), preload)
    while core.has_unfinished():
        core.step()
    return time.perf_counter() - start


def run_cache_bench(cfg: CacheBenchConfig, progress: Callable[[str], None]) -> dict[str, Any]:
    import redis

    from legato.cache.block_hash import prefix_block_hashes
    from legato.cache.kv_codec import encode_chunk
    from legato.cache.load_cost import plan_load
    from legato.engine_adapter.torch import build_core

    prompt = tuple((i * 7919 + cfg.seed) % 250 for i in range(cfg.prefix_tokens))
    with redis_server(cfg.redis_url, progress) as url:
        progress(f"building the torch engine and prefilling {cfg.prefix_tokens} tokens (recompute)")
        opts: dict[str, Any] = {
            "redis_url": url,
            "redis_chunk_blocks": cfg.chunk_blocks,
            "host_tier_bytes": 1 << 30,
        }
        opts["redis_op_timeout_s"] = 2.0
        source = build_core(**opts)
        assert source.tiers is not None and source.tiers.redis is not None
        source.tiers.redis.client.flushdb()
        recompute: list[float] = []
        for r in range(cfg.repeats):
            fresh = build_core(seed=cfg.seed)
            recompute.append(_ttft(fresh, prompt, [], f"recompute-{r}"))
            progress(f"  recompute TTFT #{r + 1}: {recompute[-1] * 1e3:.0f} ms")
        _ttft(source, prompt, [], "source")
        source.tiers.flush()
        bs = source.config.block_size
        usable = (len(prompt) - 1) // bs
        hashes = prefix_block_hashes(list(prompt), bs, source.extra_keys(None))[:usable]
        blocks = source.export_blocks(hashes)
        c = cfg.chunk_blocks
        chunks = [blocks[i : i + c] for i in range(0, len(blocks) - c + 1, c)]
        tier = source.tiers.redis
        fmt = source.kv_format
        values = [encode_chunk(fmt, ch) for ch in chunks]
        nbytes = sum(len(v) for v in values)
        raw = redis.Redis.from_url(url, socket_timeout=10)
        lasts = [ch[-1].block_hash for ch in chunks]
        progress(
            f"throughput: {len(chunks)} chunks of {len(values[0]) / 2**20:.2f} MiB, {cfg.repeats} rounds"
        )
        rates: dict[str, list[float]] = {"raw_set": [], "raw_get": [], "tier_put": [], "tier_get": []}
        for r in range(cfg.repeats):
            moved = nbytes * cfg.passes
            t = time.perf_counter()
            for _ in range(cfg.passes):
                pipe = raw.pipeline(transaction=False)
                for i, v in enumerate(values):
                    pipe.set(f"bench:raw:{{{i}}}", v, ex=600)
                pipe.execute()
            rates["raw_set"].append(moved / (time.perf_counter() - t))
            t = time.perf_counter()
            for _ in range(cfg.passes):
                pipe = raw.pipeline(transaction=False)
                for i in range(len(values)):
                    pipe.get(f"bench:raw:{{{i}}}")
                got = pipe.execute()
            rates["raw_get"].append(moved / (time.perf_counter() - t))
            assert all(g is not None for g in got)
            t = time.perf_counter()
            for _ in range(cfg.passes):
                assert tier.put(chunks) == len(chunks)
            rates["tier_put"].append(moved / (time.perf_counter() - t))
            t = time.perf_counter()
            for _ in range(cfg.passes):
                loaded = tier.get(lasts)
            rates["tier_get"].append(moved / (time.perf_counter() - t))
            assert len(loaded) == len(blocks) - len(blocks) % c
            progress(
                f"  round {r + 1}: " + ", ".join(f"{k} {v[-1] / 1e9:.2f} GB/s" for k, v in rates.items())
            )
        raw.delete(*[f"bench:raw:{{{i}}}" for i in range(len(values))])
        gbps = {k: statistics.median(v) / 1e9 for k, v in rates.items()}

        progress("TTFT with the prefix in the host tier / in Redis (fresh device each time)")
        host_s: list[float] = []
        redis_s: list[float] = []
        tiers = source.tiers
        for r in range(cfg.repeats):
            target = build_core(seed=cfg.seed, host_tier_bytes=1 << 30)
            host_tiers = target.tiers
            assert host_tiers is not None and host_tiers.host is not None
            host_tiers.host.put(blocks, None, 0, "", float("inf"))
            t = time.perf_counter()
            pre = host_tiers.host.get(hashes)
            host_s.append(time.perf_counter() - t + _ttft(target, prompt, pre, f"host-{r}"))
            target = build_core(seed=cfg.seed)
            t = time.perf_counter()
            pre = tier.get(lasts)
            redis_s.append(time.perf_counter() - t + _ttft(target, prompt, pre, f"redis-{r}"))
            progress(f"  #{r + 1}: host {host_s[-1] * 1e3:.0f} ms, redis {redis_s[-1] * 1e3:.0f} ms")
        measured = {
            "recompute": statistics.median(recompute),
            "host": statistics.median(host_s),
            "redis": statistics.median(redis_s),
        }

        # What the cost model chooses, from measured costs: the engine's fitted prefill cost and
        # the tier estimates updated by the loads above.
        redis_tokens = len(chunks) * c * bs
        host_cost = tiers.host_cost.cost()
        redis_cost = tiers.redis_cost
        redis_cost.bandwidth_bytes_per_s = gbps["tier_get"] * 1e9
        plans = {
            "host": plan_load(0, [(host_cost, usable * bs)], fmt.block_nbytes / bs, source.prefill_cost),
            "redis": plan_load(
                0, [(redis_cost.cost(), redis_tokens)], fmt.block_nbytes / bs, source.prefill_cost
            ),
        }
        choices = {}
        for name, plan in plans.items():
            chosen = plan.loads[0][0] if plan.loads else "recompute"
            fastest = min(("recompute", name), key=lambda k: measured[k])
            choices[name] = {
                "chosen": chosen,
                "estimated_s": plan.estimated_s,
                "fastest_measured": fastest,
                "correct": chosen == fastest,
            }
        source.tiers.close()
    return {
        "chunk_bytes": len(values[0]),
        "chunks": len(chunks),
        "gb_per_s": gbps,
        "put_ratio_vs_raw": gbps["tier_put"] / gbps["raw_set"],
        "get_ratio_vs_raw": gbps["tier_get"] / gbps["raw_get"],
        "prefix_tokens": cfg.prefix_tokens,
        "ttft_s": measured,
        "prefill_model": {
            "per_token_s": source.prefill_cost.per_token_s,
            "per_token_context_s": source.prefill_cost.per_token_context_s,
            "predicted_recompute_s": source.prefill_cost(0, usable * bs),
        },
        "cost_model_choice": choices,
    }


def format_report(result: dict[str, Any]) -> str:
    g = result["gb_per_s"]
    t = result["ttft_s"]
    lines = [
        f"Redis tier throughput ({result['chunks']} chunks of {result['chunk_bytes'] / 2**20:.2f} MiB, "
        "median GB/s)",
        f"  put {g['tier_put']:.2f} vs raw SET {g['raw_set']:.2f}  ({result['put_ratio_vs_raw']:.0%} of raw)",
        f"  get {g['tier_get']:.2f} vs raw GET {g['raw_get']:.2f}  ({result['get_ratio_vs_raw']:.0%} of raw)",
        f"TTFT of a {result['prefix_tokens']}-token prefix (median s)",
        f"  recompute {t['recompute']:.3f}   host-tier load {t['host']:.3f}   Redis load {t['redis']:.3f}",
        "Cost model (measured prefill fit and tier bandwidths)",
    ]
    for tier, c in result["cost_model_choice"].items():
        mark = "ok" if c["correct"] else "WRONG"
        lines.append(
            f"  prefix in {tier}: chooses {c['chosen']} (est {c['estimated_s']:.3f}s); "
            f"fastest measured {c['fastest_measured']}  [{mark}]"
        )
    return "\n".join(lines)
