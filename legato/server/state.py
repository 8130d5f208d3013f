"""`ServerState`: everything the REST service's routes share, built once per server.

`build_state` creates the objects (store, scheduler, tool runtime, executor, run manager) without
starting them; the app's lifespan (`legato.server.app`) enters them in dependency order and
leaves them in reverse. Routes reach the state as `request.app.state.legato`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from legato.engine_adapter.base import Engine
from legato.programs.executor import Executor
from legato.scheduler.base import CallScheduler
from legato.scheduler.events import TenantWeight
from legato.scheduler.passthrough import PassthroughScheduler
from legato.server.auth import CACHE_SALT_KEY, QuotaTracker, TenantRegistry
from legato.server.config import ServerConfig
from legato.server.metering import MeteredScheduler
from legato.server.runs import RunManager
from legato.server.store import RunStore, open_store
from legato.tools.registry import ToolRegistry
from legato.tools.runtime import ToolRuntime


@dataclass
class ServerState:
    config: ServerConfig
    engine: Engine
    scheduler: CallScheduler  # what the executor calls (metered, wrapping the policy scheduler)
    store: RunStore
    tenants: TenantRegistry
    quotas: QuotaTracker
    tools: ToolRuntime
    executor: Executor
    runs: RunManager
    inner_scheduler: Any = None  # the PolicyScheduler / PassthroughScheduler (entered by the lifespan)
    ready: bool = False
    extras: dict[str, Any] = field(default_factory=dict)  # for other routers (proxy, metrics)

    @property
    def registry(self) -> ToolRegistry:
        return self.tools.registry


def make_scheduler(engine: Engine, policy: str | None) -> Any:
    """Passthrough (the engine batches) or the named `legato bench` policy, live."""
    if policy is None or policy == "passthrough":
        return PassthroughScheduler(engine, tenant_salt=CACHE_SALT_KEY)
    from legato.scheduler.baselines import POLICIES
    from legato.scheduler.runtime import PolicyScheduler

    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; valid: passthrough, {', '.join(sorted(POLICIES))}")
    return PolicyScheduler([engine], POLICIES[policy](), tenant_salt=CACHE_SALT_KEY)


def weight_setter(inner: Any) -> Callable[[str, float], None]:
    """Tells the scheduler a tenant's fair-share weight (a `TenantWeight` event, keyed by tenant
    id as the executor's calls are); weighted policies (`--policy legato`) use it, others ignore it."""

    def apply(tenant_id: str, weight: float) -> None:
        if weight > 0:
            inner.notify(TenantWeight(tenant_id, weight))

    return apply


def build_state(
    config: ServerConfig,
    engine: Engine,
    registry: ToolRegistry,
    *,
    store: RunStore | None = None,
) -> ServerState:
    store = (
        store
        if store is not None
        else open_store(
            str(config.db_path) if config.db_path else None, config.redis_url, config.redis_prefix
        )
    )
    quotas = QuotaTracker()
    inner = make_scheduler(engine, config.policy)
    scheduler = MeteredScheduler(inner, quotas)
    tools = ToolRuntime(registry)
    executor = Executor(scheduler, tools, journal=store)
    limit = getattr(engine, "max_model_len", None)
    if limit is None:  # the torch engine keeps it on its core
        limit = getattr(getattr(engine, "core", None), "max_model_len", None)
    runs = RunManager(
        store,
        executor,
        quotas,
        config.limits,
        registry,
        limit if isinstance(limit, int) else None,
        set_weight=weight_setter(inner),
    )
    return ServerState(
        config=config,
        engine=engine,
        scheduler=scheduler,
        store=store,
        tenants=TenantRegistry(store, config.single_tenant, config.default_max_concurrent_runs),
        quotas=quotas,
        tools=tools,
        executor=executor,
        runs=runs,
        inner_scheduler=inner,
    )
