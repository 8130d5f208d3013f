"""`create_app(state)`: the REST service's FastAPI app.

Routers: workflows (`/v1/programs`, `/v1/runs`, SSE events), health (`/healthz`, `/readyz`,
`/v1/limits`). Other components add theirs with `app.include_router(...)` (the OpenAI-compatible
proxy, metrics, the operator page `/ui`). The lifespan starts, in order: store, engines,
scheduler, tool runtime, executor, run manager; then resumes the runs a previous server left in
flight; and stops them in reverse (runs are suspended, not cancelled, so the next server resumes
them).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from legato.engine_adapter.server.strict_json import StrictJSONRoute
from legato.server.errors import install_error_handlers
from legato.server.limits import BodyLimitMiddleware
from legato.server.metrics import install_metrics
from legato.server.proxy import proxy_router
from legato.server.routes_events import router as events_router
from legato.server.routes_health import router as health_router
from legato.server.routes_programs import router as programs_router
from legato.server.routes_rl import rl_router
from legato.server.routes_rl_control import WEIGHT_UPLOAD_PATHS
from legato.server.routes_runs import router as runs_router
from legato.server.state import ServerState
from legato.server.ui.routes import install_ui

log = logging.getLogger(__name__)


async def _enter(stack: contextlib.AsyncExitStack, obj: Any) -> None:
    """Enter `obj` as an async context manager, or register its `close()` (engines without one)."""
    if hasattr(obj, "__aenter__"):
        await stack.enter_async_context(obj)
    elif hasattr(obj, "close"):
        stack.push_async_callback(obj.close)


@contextlib.asynccontextmanager
async def running(state: ServerState) -> AsyncIterator[ServerState]:
    """Start everything the state holds (also usable without an app, e.g. in tests)."""
    async with contextlib.AsyncExitStack() as stack:
        state.store.claim()
        stack.push_async_callback(state.store.close)
        await state.store.open()
        for shared in state.shared:  # client tool results, tokens per minute, fair share
            await stack.enter_async_context(shared)
        for engine in state.replicas:
            await _enter(stack, engine)
        if state.inner_scheduler is not None:
            await _enter(stack, state.inner_scheduler)
        await stack.enter_async_context(state.tools)
        await stack.enter_async_context(state.executor)
        await stack.enter_async_context(state.runs)
        for tenant in await state.store.list_tenants():  # fair-share weights (resumed runs too)
            state.runs.set_weight(tenant.id, tenant.weight)
        if await state.tenants.keyless_allowed():
            log.warning(
                "single-tenant mode: requests from localhost act as tenant 'default' whatever API "
                "key they send, or none (add a tenant with `legato tenants add NAME` to require keys)"
            )
        resumed = await state.runs.resume_unfinished()
        if resumed:
            log.info("resumed %d run(s) left in flight by a previous server", resumed)
        state.ready = True
        try:
            yield state
        finally:
            state.ready = False
            log.info("stopping: %d run(s) in flight will resume on the next start", state.runs.active_count())


def create_app(state: ServerState) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with running(state), anyio.create_task_group() as background:
            proxy = state.extras.get("proxy")
            if proxy is not None:  # end proxy programs that went idle, even with nobody scraping
                background.start_soon(proxy.reap_idle)
            background.start_soon(ui.run, state)  # what /ui shows, gathered off its requests
            yield
            background.cancel_scope.cancel()

    app = FastAPIOffline(  # /docs and /redoc from assets shipped in the package: no CDN, works offline
        title="Legato",
        summary="Agent-workflow-aware orchestration for LLM inference: submit programs, follow runs.",
        version="1",
        lifespan=lifespan,
    )
    app.router.route_class = StrictJSONRoute  # routers included below bring their own (the same)
    app.state.legato = state
    install_error_handlers(app)
    limits = state.config.limits
    uploads = dict.fromkeys(WEIGHT_UPLOAD_PATHS, limits.max_weights_bytes)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=limits.max_body_bytes, path_limits=uploads)
    app.include_router(health_router)
    app.include_router(programs_router)
    app.include_router(runs_router)
    app.include_router(events_router)
    app.include_router(proxy_router(state))  # OpenAI-compatible agent proxy
    app.include_router(rl_router(state))  # RL rollouts, weight sync, SkyRL / slime routes
    install_metrics(app, state)  # /metrics + request counters
    ui = install_ui(app, state)  # /ui: the operator page and its data endpoints
    return app
