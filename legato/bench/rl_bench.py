"""`legato bench rl`: multi-turn GRPO rollouts through `legato serve` on the torch engine, one
server per policy (Legato's program-level scheduling vs passthrough), in interleaved repetitions.

Each repetition starts `legato serve --policy P` as a subprocess on the seeded default model with
a KV cache smaller than every rollout's context together, then runs the same rollouts: groups of
`n` samples of one prompt (one prefill, forked KV), `turns` model turns each, with a tool call of
`tool_s` seconds and `env_tokens` tool tokens between turns (loss mask 0). Between turns the
rollouts compete for KV: passthrough evicts by LRU and recomputes what a rollout lost, Legato's
policy admits rollouts while their KV fits (a group's prompt counted once), keeps (pins) a
rollout's KV across its tool call and routes by program and group. The figure of merit is
rollout tokens per second: model tokens generated / wall seconds. Each run also reports what the
engine computed (`WORK`, from `/metrics`) and the server's CPU seconds: on a shared machine the
rate moves with other load, the work done does not. Each repetition also measures what a prompt
token and a decoded token cost on this machine, and the summary turns passthrough's work into
the best ratio any policy could reach here (`cpu_bound`, see `rl_costs.py`): on a CPU, where a
decoded token costs tens of prompt tokens, that bound is what says whether a target is reachable.

The pool must be the constraint for a policy to matter: with the defaults of an earlier version
(24 rollouts, 400 blocks) every rollout's KV fit, both policies computed exactly the same prompt
tokens and evicted nothing, and the ratio was noise around 1.0.
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx

from legato.bench.rl_costs import StepCosts, cpu_bound, measure_step_costs

READY_TIMEOUT_S = 120.0
# What the engines computed during a run, from `/metrics` (summed over replicas): why one policy
# is faster shows here (prompt tokens recomputed, preemptions), not only in the rate.
WORK = {
    "prefill_tokens": "legato_engine_prefill_tokens_total",
    "cache_hit_tokens": "legato_cache_hit_tokens_total",
    "lookup_tokens": "legato_cache_lookup_tokens_total",
    "preemptions": "legato_engine_preemptions_total",
    "evicted_blocks": "legato_engine_evicted_blocks_total",
}


@dataclass(frozen=True, slots=True)
class RLBenchConfig:
    # KV-bound by construction, as RL rollouts are: 64 rollouts at once (8 prompts x GRPO n=8,
    # the engine's batch limit) whose contexts at their last turn (~700 tokens, 44 blocks) sum
    # to ~1,400 blocks with each group's prompt counted once, on a pool of 512 blocks.
    groups: int = 8
    n: int = 8
    turns: int = 4
    prompt_tokens: int = 384  # shared system prompt + a per-group task
    max_tokens: int = 32  # model tokens per turn
    env_tokens: int = 64  # tool output per turn
    tool_s: float = 0.5  # simulated environment latency per tool call
    num_blocks: int = 512  # KV blocks of the engine (16 tokens each)
    repetitions: int = 3
    seed: int = 0
    threads: int = 1  # torch threads of each server (and of the cost measurement)
    device: str = "cpu"  # where each server's torch engine runs (cpu, cuda, cuda:N)


@dataclass(frozen=True, slots=True)
class RLRun:
    policy: str
    repetition: int
    tokens: int
    seconds: float
    work: dict[str, float] = field(default_factory=dict)  # the engines' counters (`WORK`)
    cpu_s: float | None = None  # CPU seconds the server used during the run (Linux; else None)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def _prompts(cfg: RLBenchConfig) -> list[list[int]]:
    rng = random.Random(cfg.seed)
    shared = [rng.randrange(32, 127) for _ in range(cfg.prompt_tokens // 2)]
    rest = cfg.prompt_tokens - len(shared)
    return [shared + [rng.randrange(32, 127) for _ in range(rest)] for _ in range(cfg.groups)]


async def _rollouts(url: str, cfg: RLBenchConfig) -> int:
    """Run every group's rollouts at once; returns the model tokens generated."""
    sampling = {"max_tokens": cfg.max_tokens, "temperature": 1.0, "ignore_eos": True}
    rng = random.Random(cfg.seed + 1)
    env = [[rng.randrange(32, 127) for _ in range(cfg.env_tokens)] for _ in range(cfg.turns)]
    total = 0
    async with httpx.AsyncClient(base_url=url, timeout=600) as c:

        async def one(rid: str) -> None:
            nonlocal total
            for turn in range(1, cfg.turns):
                await anyio.sleep(cfg.tool_s)  # the tool runs; the rollout's KV waits
                body = {"env_ids": env[turn], "sampling_params": sampling}
                r = await c.post(f"/v1/rollouts/{rid}/turns", json=body)
                r.raise_for_status()
                total += len(r.json()["token_ids"])
            (await c.post(f"/v1/rollouts/{rid}/finish")).raise_for_status()

        async def group(g: int, prompt: list[int]) -> None:
            nonlocal total
            body = {"rollout_id": f"g{g}", "prompt_ids": prompt, "n": cfg.n, "sampling_params": sampling}
            r = await c.post("/v1/rollouts", json=body)
            r.raise_for_status()
            turns = r.json()["turns"]
            total += sum(len(t["token_ids"]) for t in turns)
            async with anyio.create_task_group() as tg:
                for t in turns:
                    tg.start_soon(one, t["rollout_id"])

        async with anyio.create_task_group() as tg:
            for g, prompt in enumerate(_prompts(cfg)):
                tg.start_soon(group, g, prompt)
    return total


class _Server:
    """`legato serve --port 0 --policy P` in a subprocess (its log in a temp dir)."""

    def __init__(self, policy: str, cfg: RLBenchConfig, workdir: Path) -> None:
        self.log = workdir / f"serve-{policy}.log"
        args = [
            sys.executable,
            "-m",
            "legato.cli",
            "serve",
            "--port",
            "0",
            "--policy",
            policy,
            "--db",
            str(workdir / f"{policy}.db"),
            "--engine",
            f"torch:num_blocks={cfg.num_blocks},device={cfg.device}",
            "--log-level",
            "warning",
        ]
        # One torch thread by default: on a small shared machine the client needs a core too, and
        # the CPU seconds then count work, not worker threads spinning while they wait for one.
        threads = str(cfg.threads)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
        self.url = self._wait()

    def _wait(self) -> str:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"legato serve exited: {self.log.read_text()[-2000:]}")
            for line in self.log.read_text(errors="replace").splitlines():
                if line.startswith("Legato serving at "):
                    url = line.split(" at ", 1)[1].split()[0]
                    try:
                        if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                            return url
                    except httpx.HTTPError:
                        pass  # printed before it listens: try again
            time.sleep(0.2)
        raise RuntimeError("legato serve did not become ready")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process so far, from /proc (None where there is none).
    On a shared machine wall time follows whatever else runs; CPU time follows the work done."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def engine_work(url: str) -> dict[str, float]:
    """The `WORK` counters of a server's `/metrics` (device tier only for hits)."""
    out = dict.fromkeys(WORK, 0.0)
    names = {metric: key for key, metric in WORK.items()}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        name, _, rest = line.partition("{")
        key = names.get(name)
        if key is None or (key == "cache_hit_tokens" and 'tier="device"' not in rest):
            continue
        out[key] += float(line.rsplit(" ", 1)[1])
    return out


def run_rl_bench(
    cfg: RLBenchConfig, policies: tuple[str, ...] = ("legato", "passthrough")
) -> tuple[list[RLRun], list[StepCosts]]:
    """Interleaved repetitions (the order alternates each time), one fresh server per run; on the
    CPU each repetition first measures what a prompt and a decoded token cost (`rl_costs.py`: a
    bound in CPU seconds, which says nothing of a GPU's time)."""
    runs: list[RLRun] = []
    costs: list[StepCosts] = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(cfg.repetitions):
            if cfg.device == "cpu":
                costs.append(measure_step_costs(cfg))
            order = policies if rep % 2 == 0 else tuple(reversed(policies))
            for policy in order:
                server = _Server(policy, cfg, Path(tmp))
                try:
                    cpu0 = process_cpu_s(server.proc.pid)
                    started = time.perf_counter()
                    tokens = anyio.run(_rollouts, server.url, cfg)
                    seconds = time.perf_counter() - started
                    cpu1 = process_cpu_s(server.proc.pid)
                    cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
                    runs.append(RLRun(policy, rep, tokens, seconds, engine_work(server.url), cpu))
                finally:
                    server.stop()
    return runs, costs


def summary(runs: list[RLRun], cfg: RLBenchConfig, costs: Sequence[StepCosts] = ()) -> dict[str, Any]:
    """Median tokens/s (and tokens per server CPU second) per policy, their spread, the ratio of
    the first policy to the last, and with `costs` the CPU bound on that ratio (`rl_costs.py`)."""
    by: dict[str, list[float]] = {}
    per_cpu: dict[str, list[float]] = {}
    work: dict[str, list[dict[str, float]]] = {}
    for r in runs:
        by.setdefault(r.policy, []).append(r.tokens_per_s)
        work.setdefault(r.policy, []).append(r.work)
        if r.cpu_s:
            per_cpu.setdefault(r.policy, []).append(r.tokens / r.cpu_s)
    out: dict[str, Any] = {"config": asdict(cfg), "policies": {}}
    for policy, rates in by.items():
        out["policies"][policy] = {
            "median_tokens_per_s": round(statistics.median(rates), 2),
            "min": round(min(rates), 2),
            "max": round(max(rates), 2),
            "runs": [round(x, 2) for x in rates],
            "engine_work_median": {
                key: statistics.median(w.get(key, 0.0) for w in work[policy]) for key in WORK
            },
        }
        if policy in per_cpu:
            out["policies"][policy]["median_tokens_per_cpu_s"] = round(statistics.median(per_cpu[policy]), 2)
    names = list(by)
    if len(names) >= 2:
        pair = f"{names[0]}/{names[-1]}"
        first, last = (statistics.median(by[n]) for n in (names[0], names[-1]))
        out["ratio"] = {pair: round(first / last, 3)}
        if names[0] in per_cpu and names[-1] in per_cpu:
            first, last = (statistics.median(per_cpu[n]) for n in (names[0], names[-1]))
            out["ratio_per_cpu_s"] = {pair: round(first / last, 3)}
        if costs:
            best = StepCosts(
                statistics.median(c.prefill_s_per_token for c in costs),
                statistics.median(c.decode_s_per_token for c in costs),
            )
            out["step_costs"] = {
                "prefill_cpu_us_per_token": round(best.prefill_s_per_token * 1e6, 2),
                "decode_cpu_us_per_token": round(best.decode_s_per_token * 1e6, 2),
                "decode_over_prefill": round(best.decode_over_prefill, 1),
            }
            bound = cpu_bound(cfg, best, runs, names[-1])
            if bound is not None:
                out["cpu_bound"] = {"baseline": names[-1], **bound.as_dict()}
    return out
