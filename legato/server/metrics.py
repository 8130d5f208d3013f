"""Prometheus `/metrics` of the REST service (prometheus-client, one registry per app).

Two kinds of numbers:

* **Events**, counted where they happen: HTTP requests by route and status, per-tenant service
  in tokens (prompt, cached, completion — the fair-share currency; metered on the scheduler every
  LLM call goes through, so workflow runs and proxied calls alike), proxied calls and their
  latency, and program task-completion time (TCT) as a histogram (`observe_call`, `observe_run`).
* **State**, read at scrape time: queue depth, running calls, active / between-calls / paused
  programs and busy seconds per replica (from the scheduler, whatever the policy, passthrough
  included, and the proxy's program tracker), KV blocks and the prefix-cache hit rate per tier
  (from the engine's own stats for the device tier; host RAM and Redis from the torch engine's
  tier manager, when tiers are attached: prompt tokens loaded from each), the per-tier
  families of `metrics_tiers` (blocks, bytes, loads, offloads, load-vs-recompute choices) and
  the engine work counters of `metrics_work` (prompt tokens computed, forks, preemptions).

The registry is per app, not prometheus-client's global one, so several apps (tests) live in one
process; the process collector gives `process_resident_memory_bytes`, which `legato bench load`
samples to check that memory stays flat. Engine stats are awaited (with a timeout) before the
registry is rendered, because collectors are synchronous.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from fastapi import APIRouter, FastAPI, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from legato.engine_adapter.base import Engine
from legato.engine_adapter.server.strict_json import StrictJSONRoute
from legato.server.engine_stats import fetch_engine_stats
from legato.server.metrics_spec import spec_families
from legato.server.metrics_tiers import tier_families
from legato.server.metrics_work import work_families

log = logging.getLogger(__name__)

STATS_TIMEOUT_S = 5.0
TIERS = ("device", "host", "redis")
# Task completion time of agent programs: seconds to hours.
TCT_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, float("inf"))
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, float("inf"))


@dataclass(slots=True)
class Sources:
    """What the state collector reads at scrape time. Everything is optional: a server without a
    proxy has no tracker; a passthrough scheduler has no queue of its own."""

    engines: Sequence[Engine] = ()
    scheduler: Any = None  # a CallScheduler; PolicyScheduler's counters are read when present
    tracker: Any = None  # legato.server.programs_tracker.ProgramTracker
    extra: list[Callable[[], Iterable[Metric]]] = field(default_factory=list)


class ServiceMetrics:
    """The app's registry and its event instruments."""

    def __init__(self, sources: Sources | None = None, *, process: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.sources = sources or Sources()
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        r = self.registry
        self.requests = Counter(
            "legato_http_requests",
            "HTTP requests answered, by route template and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            "legato_http_request_duration_seconds",
            "Time to the response's first byte, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "legato_tenant_tokens",
            "Per-tenant service in tokens (kind: prompt, cached, completion).",
            ["tenant", "kind"],
            registry=r,
        )
        self.calls = Counter(
            "legato_llm_calls",
            "LLM calls finished, by source (proxy, workflow) and finish reason.",
            ["source", "finish_reason"],
            registry=r,
        )
        self.call_latency = Histogram(
            "legato_llm_call_duration_seconds",
            "LLM call time from arrival (queueing included) to its last token.",
            ["source"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tct = Histogram(
            "legato_program_tct_seconds",
            "Task completion time of programs (first call to end).",
            ["source", "status"],
            buckets=TCT_BUCKETS,
            registry=r,
        )
        self.replica_calls = Counter(
            "legato_replica_calls",
            "LLM calls (proxy and workflows) by the replica the scheduler placed them on.",
            ["replica"],
            registry=r,
        )
        self.programs_finished = Counter(
            "legato_proxy_programs_finished",
            "Proxy programs ended, by why (released, last_step, idle).",
            ["why"],
            registry=r,
        )
        self._engine_stats: list[object | None] = []
        self._tier_stats: list[dict[str, int]] = []  # per replica: tier -> tokens loaded from it
        r.register(_StateCollector(self))

    # --- events ------------------------------------------------------------------------------

    def count_tokens(self, tenant: str, kind: str, n: int) -> None:
        """Per-tenant service (kind: prompt, cached, completion), metered on every LLM call the
        service makes, proxy and workflows alike (`MeteredScheduler.meter`)."""
        if n > 0:
            self.tokens.labels(tenant, kind).inc(n)

    def observe_call(self, *, source: str, finish_reason: str, seconds: float) -> None:
        self.call_latency.labels(source).observe(seconds)
        self.calls.labels(source, finish_reason).inc()

    def observe_run(self, *, source: str, status: str, seconds: float) -> None:
        self.tct.labels(source, status).observe(max(0.0, seconds))

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.request_latency.labels(route).observe(seconds)

    # --- scrape ------------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Fetch engine stats (async on the torch engine) for the synchronous collector."""
        snapshot = await fetch_engine_stats(self.sources.engines, STATS_TIMEOUT_S)
        self._engine_stats = snapshot
        self._tier_stats = [_tier_loads(engine) for engine in self.sources.engines]

    async def render(self) -> bytes:
        tracker = self.sources.tracker
        if tracker is not None:
            tracker.sweep()  # idle programs end even when no call arrives
        await self.refresh()
        return generate_latest(self.registry)

    def router(self) -> APIRouter:
        router = APIRouter(route_class=StrictJSONRoute)

        @router.get(
            "/metrics",
            response_class=Response,
            summary="Prometheus metrics: queue depth, programs, cache hit rate per tier, per-tenant "
            "tokens, TCT histogram, request counters, process memory.",
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
            tags=["operations"],
        )
        async def metrics() -> Response:
            return Response(await self.render(), media_type=CONTENT_TYPE_LATEST)

        return router

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """ASGI middleware counting every answered request by route template (not the raw path,
        so fuzzed paths cannot blow up label cardinality). Plain ASGI rather than
        `BaseHTTPMiddleware`, which would copy every streamed chunk through a memory stream."""

        async def count(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            start = anyio.current_time()
            status = 500  # what the client gets if the app fails before answering

            async def watch(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    self._answered(scope, status, anyio.current_time() - start)
                await send(message)

            try:
                await app(scope, receive, watch)
            except BaseException:
                if status == 500:
                    self._answered(scope, status, anyio.current_time() - start)
                raise

        return count

    def _answered(self, scope: Scope, status: int, seconds: float) -> None:
        # the router stores the matched route in the (shared) scope before calling the endpoint
        template = getattr(scope.get("route"), "path", None) or "unmatched"
        self.observe_request(scope.get("method", "?"), template, status, seconds)


class _StateCollector(Collector):
    """Gauges read from the scheduler, tracker and engine stats at scrape time."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.m = metrics

    def collect(self) -> Iterable[Metric]:
        src = self.m.sources
        yield from self._scheduler(src.scheduler)
        if src.tracker is not None:
            programs = GaugeMetricFamily(
                "legato_programs",
                "Live proxy programs by state (active: a call in flight; "
                "between_calls: a tool or the client runs).",
                labels=["state"],
            )
            programs.add_metric(["active"], src.tracker.active())
            programs.add_metric(["between_calls"], src.tracker.between_calls())
            yield programs
        yield from self._engines()
        for extra in src.extra:
            yield from extra()

    @staticmethod
    def _scheduler(sched: Any) -> Iterable[Metric]:
        if sched is None:
            return
        pending = getattr(sched, "pending", None)
        waiting = getattr(sched, "waiting", None)
        running = getattr(sched, "running", None)
        runs = getattr(sched, "runs", None)
        if isinstance(pending, dict) and isinstance(waiting, list):
            queue = GaugeMetricFamily(
                "legato_queue_depth",
                "Calls not yet producing tokens: held by the policy (stage=policy) "
                "or queued in an engine (stage=engine).",
                labels=["stage"],
            )
            queue.add_metric(
                ["policy"], sum(1 for p in pending.values() if getattr(p, "replica", None) is None)
            )
            queue.add_metric(["engine"], sum(waiting))
            yield queue
        if isinstance(running, list):
            yield GaugeMetricFamily("legato_running_calls", "Calls producing tokens.", value=sum(running))
        if isinstance(runs, dict):
            paused = sum(1 for r in runs.values() if getattr(r, "paused", False))
            state = GaugeMetricFamily(
                "legato_scheduler_runs", "Program runs the scheduler knows, by state.", labels=["state"]
            )
            state.add_metric(["paused"], paused)
            state.add_metric(["live"], len(runs) - paused)
            yield state
        busy = getattr(sched, "busy", None)
        if busy is not None and hasattr(busy, "busy_now"):  # every policy, passthrough included
            seconds = CounterMetricFamily(
                "legato_replica_busy_seconds",
                "Seconds a replica had at least one call inside it.",
                labels=["replica"],
            )
            for i in range(len(busy.busy_s)):
                seconds.add_metric([str(i)], busy.busy_now(i))
            yield seconds
        stats = getattr(sched, "stats", None)
        if isinstance(stats, dict):
            events = CounterMetricFamily(
                "legato_scheduler_decisions",
                "Decisions the policy made and the runtime applied.",
                labels=["kind"],
            )
            for key, value in sorted(stats.items()):
                if isinstance(value, int):
                    events.add_metric([key], value)
            yield events

    def _engines(self) -> Iterable[Metric]:
        stats_list = self.m._engine_stats
        if not any(s is not None for s in stats_list):
            return
        blocks = GaugeMetricFamily(
            "legato_kv_blocks", "KV-cache blocks per replica by state.", labels=["replica", "state"]
        )
        engine_q = GaugeMetricFamily(
            "legato_engine_requests", "Requests inside the engine by state.", labels=["replica", "state"]
        )
        hit = CounterMetricFamily(
            "legato_cache_hit_tokens",
            "Prompt tokens served from cached KV: tier=device counts every cached prompt token "
            "(blocks just loaded from a lower tier included), host / redis those loaded from that tier.",
            labels=["replica", "tier"],
        )
        prompt = CounterMetricFamily(
            "legato_cache_lookup_tokens", "Prompt tokens looked up in the KV cache.", labels=["replica"]
        )
        rate = GaugeMetricFamily(
            "legato_cache_hit_rate",
            "Cached prompt tokens / prompt tokens since start, per tier.",
            labels=["replica", "tier"],
        )
        for i, stats in enumerate(stats_list):
            if stats is None:
                continue
            rep = str(i)
            for state in ("total", "free", "used", "cached"):
                value = getattr(stats, f"{state}_blocks", None)
                if isinstance(value, int):
                    blocks.add_metric([rep, state], value)
            for state in ("running", "waiting"):
                value = getattr(stats, state, None)
                if isinstance(value, int):
                    engine_q.add_metric([rep, state], value)
            looked = getattr(stats, "prompt_tokens", None)
            if not isinstance(looked, int):
                continue
            prompt.add_metric([rep], looked)
            tiers = self.m._tier_stats[i] if i < len(self.m._tier_stats) else {}
            for tier in TIERS:
                name = "prefix_hit_tokens" if tier == "device" else f"{tier}_hit_tokens"
                value = tiers.get(tier, getattr(stats, name, None))
                if isinstance(value, int):
                    hit.add_metric([rep, tier], value)
                    rate.add_metric([rep, tier], value / looked if looked else 0.0)
        yield from (blocks, engine_q, hit, prompt, rate)
        yield from tier_families(self.m.sources.engines, stats_list)
        yield from spec_families(stats_list)
        yield from work_families(stats_list)


def install_metrics(app: FastAPI, state: Any) -> ServiceMetrics:
    """`/metrics` and the request-counting middleware on the REST app; the `ServiceMetrics` is
    kept in `state.extras["metrics"]` so other parts (proxy, run manager) report to it."""
    extras: dict[str, Any] = state.extras
    sched = getattr(state, "inner_scheduler", None) or state.scheduler
    proxy = extras.get("proxy")
    metrics = ServiceMetrics(
        Sources(engines=state.replicas, scheduler=sched, tracker=getattr(proxy, "tracker", None))
    )
    extras["metrics"] = metrics
    quotas = getattr(state, "quotas", None)
    if quotas is not None:  # 429s per tenant, whichever quota refused (counted by the error handler)
        metrics.sources.extra.append(lambda: _rejections(quotas.rejected))
    if hasattr(state.scheduler, "meter"):  # the MeteredScheduler every call goes through
        state.scheduler.meter = metrics.count_tokens
        state.scheduler.on_placed = lambda replica: metrics.replica_calls.labels(str(replica)).inc()
    runs = getattr(state, "runs", None)
    if runs is not None:  # workflow runs' completion times join the proxy programs' in the TCT histogram
        runs.on_finished = lambda status, seconds: metrics.observe_run(
            source="workflow", status=status, seconds=seconds
        )
    app.add_middleware(_Counting, metrics=metrics)
    app.include_router(metrics.router())
    return metrics


def _rejections(rejected: dict[str, int]) -> Iterable[Metric]:
    family = CounterMetricFamily(
        "legato_tenant_rejections", "Requests refused with 429 (a quota), per tenant.", labels=["tenant"]
    )
    for tenant, n in sorted(rejected.items()):
        family.add_metric([tenant], n)
    yield family


def _tier_loads(engine: Engine) -> dict[str, int]:
    """Prompt tokens the torch engine's KV tiers served (`TierManager.stats`), by tier."""
    stats = getattr(getattr(getattr(engine, "core", None), "tiers", None), "stats", None)
    out: dict[str, int] = {}
    for tier in ("host", "redis"):
        value = getattr(stats, f"{tier}_loaded_tokens", None)
        if isinstance(value, int):
            out[tier] = value
    return out


class _Counting:
    """`app.add_middleware` wants a class: this one defers to `ServiceMetrics.middleware`."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self._call = metrics.middleware(app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._call(scope, receive, send)
