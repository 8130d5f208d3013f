"""`legato bench load`: many concurrent agent programs against a running Legato server, over HTTP.

Each of `runs` workers plays a tool-using agent through the OpenAI-compatible proxy, for
`duration_s`: a program of `turns` streamed chat calls (`program_id`, `next_tool` and
`is_last_step` hints) with a simulated tool of ~`tool_s` seconds between calls, then the next
program. Every answer is streamed to the end and checked (HTTP status, SSE error events, the
closing `[DONE]`), so "ok" means the client got a whole answer. Meanwhile the server's resident
memory is sampled (`process_resident_memory_bytes` from /metrics, or psutil with `--pid`), so the
report says whether memory stayed flat after warm-up, and the operator page's data endpoint is
polled as the page polls it (`ui_probe`), so the report says how fast it answers at this load.

Several `--url`s (instances of one deployment sharing a Redis store): agents are spread over
them round-robin, and each instance's memory is sampled and judged on its own.

`ramp_up_s`: agent i starts at `ramp_up_s * i / runs` instead of all at once (as k6's ramping
VUs or locust's spawn rate do), so the measurement is not of one synchronised burst; the default
0 starts every agent at once, the harshest start.

It is a client only: point it at `legato serve --engine sim-realtime` (a simulated GPU in real
time, no GPU needed) or at a server on a real engine. Structured concurrency throughout: one
anyio task group holds the workers and the sampler; every request has a timeout.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import random
import re
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any

import anyio
import httpx

from legato.bench.load_report import LoadReport, LoadTally, build_report
from legato.engine_adapter.server.gc_tuning import settle_heap

_RESUMES = 3  # a run's event stream is resumed at most this many times
_RSS = re.compile(r"^process_resident_memory_bytes (\S+)$", re.MULTILINE)
_SYSTEM = (
    "You are a software engineering agent working in a repository. Read the task, decide which "
    "tool to call (python, shell, search), read its output, and continue until the task is done. "
)


@dataclass(frozen=True, slots=True)
class LoadConfig:
    url: str
    runs: int = 200
    mode: str = "proxy"  # proxy: agents through /v1/chat/completions; workflow: /v1/runs + SSE events
    duration_s: float = 120.0
    turns: int = 4
    max_tokens: int = 32
    tool_s: float = 2.0  # mean simulated tool time between calls (uniform in [0.5x, 1.5x])
    system_chars: int = 1500  # shared system prompt (a prefix every program reuses)
    api_key: str | None = None
    model: str | None = None  # default: the first of GET /v1/models
    pid: int | None = None  # sample this process's RSS with psutil instead of /metrics
    sample_s: float = 5.0
    warmup_s: float | None = None  # default: a quarter of the duration
    ramp_up_s: float = 0.0  # agents start evenly spread over this (0: all at once)
    request_timeout_s: float = 120.0
    flat_tolerance: float = 0.10  # memory is "flat" if it grows less than this after warm-up
    seed: int = 0
    more_urls: tuple[str, ...] = ()  # further instances of the same deployment

    @property
    def urls(self) -> tuple[str, ...]:
        return (self.url, *self.more_urls)

    def __post_init__(self) -> None:
        if self.runs < 1 or self.turns < 1 or self.max_tokens < 1:
            raise ValueError("runs, turns and max_tokens must be >= 1")
        if not self.duration_s > 0 or self.tool_s < 0 or not self.sample_s > 0:
            raise ValueError("duration and sample period must be > 0, tool time >= 0")
        if not 0 <= self.ramp_up_s < self.duration_s:
            raise ValueError(f"ramp-up must be >= 0 and shorter than the duration, got {self.ramp_up_s}")
        if self.mode not in ("proxy", "workflow"):
            raise ValueError(f"mode must be proxy or workflow, got {self.mode!r}")


def workflow_spec(turns: int, max_tokens: int, system: str) -> dict[str, Any]:
    """A declarative program (the REST wire format) of `turns` chained LLM nodes sharing a
    system prefix, each reading the task and the previous node's output."""
    names = [f"step{i}" for i in range(turns)]
    nodes = []
    for i, name in enumerate(names):
        slots = [{"var": "task", "label": "Task: "}]
        if i:
            slots.append({"var": names[i - 1], "label": "Previous step: "})
        nodes.append(
            {
                "kind": "llm",
                "name": name,
                "output": name,
                "max_tokens": max_tokens,
                "prompt": {"parts": ["system"], "slots": slots, "suffix": "Next:"},
            }
        )
    return {
        "name": "load-chain",
        "state": [{"name": "task"}, *({"name": n} for n in names)],
        "prefix_parts": {"system": system},
        "nodes": nodes,
        "entry": names[0],
        "edges": [{"source": a, "target": b} for a, b in itertools.pairwise(names)],
    }


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[int, bytes, bytes]]:
    """`(id, event, data)` of each server-sent event of a run's stream, parsed from the raw
    bytes: the client shares the CPU with the servers it measures, so a `token` event costs it a
    byte search, not a text decode, a line split and a JSON parse (only `data` that is needed is
    parsed, by the caller). Events without an `id:` get -1; comment lines are skipped."""
    buffer = b""
    async for chunk in response.aiter_raw():
        buffer += chunk
        *blocks, buffer = buffer.split(b"\n\n")
        for block in blocks:
            seq, kind, data = -1, b"message", b""
            for line in block.split(b"\n"):
                name, _, value = line.partition(b": ")
                if name == b"id":
                    seq = int(value)
                elif name == b"event":
                    kind = value
                elif name == b"data":
                    data = value
            if data:
                yield seq, kind, data


class _Agent:
    """One simulated agent: programs of `turns` streamed calls with tool time between them."""

    def __init__(
        self, cfg: LoadConfig, index: int, model: str, client: httpx.AsyncClient, tally: LoadTally
    ) -> None:
        self.cfg = cfg
        self.index = index
        self.model = model
        self.client = client
        self.tally = tally
        self.rng = random.Random(cfg.seed * 100_003 + index)
        self.system = (_SYSTEM * (cfg.system_chars // len(_SYSTEM) + 1))[: cfg.system_chars]

    async def _open(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Send and return the response with its body unread. A request that went out on a
        keep-alive connection the server was closing at that moment (no response at all; under
        load the two sides' idle timers drift apart by the event loops' lag) is sent again
        once, as HTTP clients do, and counted in `retries`."""
        request = self.client.build_request(method, url, **kwargs)
        try:
            return await self.client.send(request, stream=True)
        except httpx.TransportError:
            self.tally.retries += 1
            return await self.client.send(request, stream=True)

    async def run(self, deadline: float) -> None:
        await anyio.sleep(self.cfg.ramp_up_s * self.index / self.cfg.runs)
        program = 0
        while time.monotonic() < deadline:
            if self.cfg.mode == "workflow":
                await self.workflow_run(program)
            else:
                await self.program(f"load-{self.index}-{program}", deadline)
            program += 1

    async def workflow_run(self, number: int) -> None:
        """One declarative run (`turns` chained LLM nodes) submitted to /v1/runs and followed
        on its SSE event stream to `run_finished`; ok when it succeeded. A dropped event stream
        is resumed with `Last-Event-ID`, as SSE clients do (counted in `retries`)."""
        cfg, tally = self.cfg, self.tally
        body = {
            "program": workflow_spec(cfg.turns, cfg.max_tokens, self.system),
            "inputs": {"task": f"Task {self.index}-{number}: fix the failing test in module {self.index}."},
        }
        start = time.monotonic()
        first: float | None = None
        status: str | None = None
        tokens = 0
        last_seq = -1
        phase = "POST /v1/runs"
        try:
            with anyio.fail_after(cfg.request_timeout_s):
                created = await self._open("POST", "/v1/runs", json=body)
                await created.aread()
                tally.post_s.append((start - tally.started, time.monotonic() - start))
                if created.status_code != 201:
                    tally.error(f"http_{created.status_code}", created.text)
                    if created.status_code == 429:  # quota: back off as told
                        await anyio.sleep(float(created.headers.get("retry-after", "1")))
                    return
                run_id = created.json()["id"]
                phase = "GET /v1/runs/{id}/events"
                for attempt in range(_RESUMES + 1):
                    headers = {"Last-Event-ID": str(last_seq)} if last_seq >= 0 else {}
                    try:
                        response = await self._open("GET", f"/v1/runs/{run_id}/events", headers=headers)
                        async with contextlib.aclosing(response):
                            if response.status_code != 200:
                                detail = (await response.aread()).decode(errors="replace")
                                tally.error(f"http_{response.status_code}", detail)
                                return
                            async for seq, kind, data in sse_events(response):
                                last_seq = max(last_seq, seq)
                                if kind == b"token":
                                    tokens += 1  # one event per engine chunk: a token on the simulator
                                    if first is None:
                                        first = time.monotonic()
                                elif kind == b"run_finished":
                                    # read on to the end of the stream (the server ends it
                                    # here), so the connection goes back to the pool for the
                                    # next run instead of being closed with unread bytes
                                    status = str((json.loads(data).get("data") or {}).get("status"))
                        break
                    except httpx.TransportError:
                        if attempt == _RESUMES:
                            raise
                        tally.retries += 1  # dropped mid-stream: resume after the last event seen
        except TimeoutError:
            tally.error("timeout", f"{phase}: run not finished within {cfg.request_timeout_s}s")
            return
        except (httpx.HTTPError, json.JSONDecodeError, KeyError, ValueError) as exc:
            tally.error(type(exc).__name__, f"{phase}: {exc}")
            return
        if status != "succeeded":
            tally.error("run_" + (status or "unfinished"), f"run ended {status}")
            return
        end = time.monotonic()
        tally.ok += 1
        tally.programs += 1
        tally.latency_s.append(end - start)
        tally.ttft_s.append((first or end) - start)
        tally.completion_tokens += tokens

    async def program(self, program_id: str, deadline: float) -> None:
        cfg = self.cfg
        messages = [
            {"role": "system", "content": self.system},
            {"role": "user", "content": f"Task {program_id}: fix the failing test in module {self.index}."},
        ]
        for turn in range(cfg.turns):
            last = turn == cfg.turns - 1
            text = await self.call(program_id, messages, last)
            if text is None or (not last and time.monotonic() >= deadline):
                await self.release(program_id)  # failed, or out of time: end the program now
                return
            if last:
                self.tally.programs += 1
                return
            await anyio.sleep(cfg.tool_s * self.rng.uniform(0.5, 1.5))
            result = f"$ python -m pytest -x\n{self.rng.randrange(1, 99)} passed, {turn} failed"
            messages += [{"role": "assistant", "content": text}, {"role": "tool", "content": result}]

    async def release(self, program_id: str) -> None:
        try:
            with anyio.fail_after(self.cfg.request_timeout_s):
                await self.client.post(f"/v1/proxy/programs/{program_id}/release")
        except (httpx.HTTPError, TimeoutError):
            pass  # the server's idle timeout ends it anyway

    async def call(self, program_id: str, messages: list[dict[str, str]], last: bool) -> str | None:
        cfg, tally = self.cfg, self.tally
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": cfg.max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
            "program_id": program_id,
            "is_last_step": last,
        }
        if not last:
            body |= {"next_tool": "pytest", "expected_tool_latency_s": cfg.tool_s}
        start = time.monotonic()
        first: float | None = None
        parts: list[str] = []
        done = False
        usage: dict[str, Any] | None = None
        try:
            with anyio.fail_after(cfg.request_timeout_s):
                response = await self._open("POST", "/v1/chat/completions", json=body)
                async with contextlib.aclosing(response):
                    if response.status_code != 200:
                        detail = (await response.aread()).decode(errors="replace")
                        tally.error(f"http_{response.status_code}", detail)
                        return None
                    async for line in response.aiter_lines():
                        if not line.startswith("data: "):
                            continue
                        data = line[6:]
                        if data == "[DONE]":
                            done = True
                            break
                        event = json.loads(data)
                        if "error" in event:
                            tally.error("stream_error", json.dumps(event["error"]))
                            return None
                        usage = event.get("usage") or usage
                        for choice in event.get("choices", ()):
                            content = choice.get("delta", {}).get("content")
                            if content:
                                if first is None:
                                    first = time.monotonic()
                                parts.append(content)
        except TimeoutError:
            tally.error("timeout", f"no complete answer within {cfg.request_timeout_s}s")
            return None
        except (httpx.HTTPError, json.JSONDecodeError) as exc:
            tally.error(type(exc).__name__, f"POST /v1/chat/completions: {exc}")
            return None
        if not done:
            tally.error("incomplete_stream", "the stream ended without data: [DONE]")
            return None
        end = time.monotonic()
        tally.ok += 1
        tally.latency_s.append(end - start)
        tally.ttft_s.append((first or end) - start)
        if usage is not None:
            tally.completion_tokens += int(usage.get("completion_tokens", 0))
            tally.prompt_tokens += int(usage.get("prompt_tokens", 0))
            details = usage.get("prompt_tokens_details") or {}
            tally.cached_tokens += int(details.get("cached_tokens", 0))
        return "".join(parts)


async def _rss(cfg: LoadConfig, client: httpx.AsyncClient) -> int | None:
    """The instance's resident memory (psutil on `--pid` for a single instance, else /metrics)."""
    if cfg.pid is not None and not cfg.more_urls:
        import psutil

        return int(psutil.Process(cfg.pid).memory_info().rss)
    try:
        with anyio.fail_after(30):
            response = await client.get("/metrics")
    except (httpx.HTTPError, TimeoutError):
        return None
    m = _RSS.search(response.text) if response.status_code == 200 else None
    return int(float(m.group(1))) if m else None


async def _sample(
    cfg: LoadConfig, clients: list[httpx.AsyncClient], tally: LoadTally, t0: float, stop: anyio.Event
) -> None:
    while not stop.is_set():
        for url, client in zip(cfg.urls, clients, strict=True):
            rss = await _rss(cfg, client)
            if rss is not None:
                tally.rss.setdefault(url, []).append((time.monotonic() - t0, rss))
        with anyio.move_on_after(cfg.sample_s):
            await stop.wait()


async def run_load(cfg: LoadConfig) -> LoadReport:
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    # Idle connections are dropped before the server's keep-alive timeout (uvicorn: 5 s), so a
    # request never goes out on a connection the server is closing at that moment. Each agent has
    # its own small pool (it sends one request at a time; the second connection covers a stream
    # being closed as the next request goes out): httpx scans every pooled connection on each
    # request, which with one pool for all agents was a third of the client's CPU. One TLS
    # context for all (building one per client costs milliseconds).
    limits = httpx.Limits(max_connections=2, max_keepalive_connections=2, keepalive_expiry=2.0)
    timeout = httpx.Timeout(cfg.request_timeout_s, connect=30)
    tls = httpx.create_ssl_context()
    tally = LoadTally()
    async with contextlib.AsyncExitStack() as stack:

        async def client(url: str) -> httpx.AsyncClient:
            new = httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=timeout, verify=tls)
            return await stack.enter_async_context(new)

        clients = [await client(url) for url in cfg.urls]  # the memory sampler's and the UI probe's
        model = cfg.model
        if model is None and cfg.mode == "proxy":
            with anyio.fail_after(30):
                response = await clients[0].get("/v1/models")
            if response.status_code != 200:
                raise RuntimeError(f"GET /v1/models answered {response.status_code}: {response.text[:200]}")
            model = str(response.json()["data"][0]["id"])
        agents = [
            _Agent(cfg, i, model or "", await client(cfg.urls[i % len(cfg.urls)]), tally)
            for i in range(cfg.runs)
        ]
        settle_heap()  # a long-lived process too: its own GC runs on the shared cores
        t0 = tally.started = time.monotonic()
        deadline = t0 + cfg.duration_s
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_sample, cfg, clients, tally, t0, stop)
            tg.start_soon(tally.ui.poll, clients[0], stop)
            async with anyio.create_task_group() as running:
                for agent in agents:
                    running.start_soon(agent.run, deadline)
            stop.set()
        elapsed = time.monotonic() - t0
        for url, sampler in zip(cfg.urls, clients, strict=True):
            final = await _rss(cfg, sampler)
            if final is not None:
                tally.rss.setdefault(url, []).append((elapsed, final))
    warmup = cfg.warmup_s if cfg.warmup_s is not None else cfg.duration_s / 4
    config = {k: v for k, v in asdict(cfg).items() if k != "api_key"}
    return build_report(config, cfg.urls, warmup, cfg.flat_tolerance, tally, elapsed)
