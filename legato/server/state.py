"""`ServerState`: everything the REST service's routes share, built once per server.

`build_state` creates the objects (store, scheduler, tool runtime, executor, run manager) without
starting them; the app's lifespan (`legato.server.app`) enters them in dependency order and
leaves them in reverse. Routes reach the state as `request.app.state.legato`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from legato.engine_adapter.base import Engine, max_model_len_of
from legato.programs.executor import Executor
from legato.programs.speculation import parse_program_spec
from legato.scheduler import by_name
from legato.scheduler.base import CallScheduler
from legato.scheduler.events import TenantWeight
from legato.scheduler.fair_share import FairShare
from legato.server.auth import CACHE_SALT_KEY, QuotaTracker, TenantRegistry
from legato.server.config import ServerConfig
from legato.server.metering import MeteredScheduler
from legato.server.runs import RunManager
from legato.server.store import RunStore, open_store
from legato.server.store.redis import RedisRunStore
from legato.server.store.redis_client_calls import RedisCallBoard
from legato.server.store.redis_fair_share import RedisFairShare
from legato.server.store.redis_usage import RedisUsage
from legato.tools.client import ClientToolBroker
from legato.tools.registry import ToolRegistry
from legato.tools.runtime import ToolRuntime


@dataclass
class ServerState:
    config: ServerConfig
    engine: Engine  # the first replica: its tokenizer and model name are the service's
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
    engines: list[Engine] = field(default_factory=list)  # every replica (the scheduler routes)
    calls: RedisCallBoard | None = None  # client tool calls shared by instances (Redis store)
    usage: RedisUsage | None = None  # tokens per minute counted across instances (Redis store)
    fair: RedisFairShare | None = None  # fair-share counters shared by instances (Redis store)

    @property
    def shared(self) -> list[Any]:
        """What instances on one store exchange while the server runs (entered by `running`)."""
        return [s for s in (self.calls, self.usage, self.fair) if s is not None]

    @property
    def registry(self) -> ToolRegistry:
        return self.tools.registry

    @property
    def replicas(self) -> list[Engine]:
        """Every engine the scheduler drives (the first is `engine`)."""
        return self.engines or [self.engine]


def as_replicas(engine: Engine | Sequence[Engine]) -> list[Engine]:
    return list(engine) if isinstance(engine, list | tuple) else [engine]  # type: ignore[list-item]


def make_scheduler(engine: Engine | Sequence[Engine], policy: str | None) -> Any:
    """Passthrough (one engine batches) or the named `legato bench` policy over every replica,
    live; cache salts keyed by the server's tenant salt."""
    return by_name.make_scheduler(as_replicas(engine), policy, tenant_salt=CACHE_SALT_KEY)


def weight_setter(inner: Any) -> Callable[[str, float], None]:
    """Tells the scheduler a tenant's fair-share weight (a `TenantWeight` event, keyed by tenant
    id as the executor's calls are); weighted policies (`--policy legato`) use it, others ignore it."""

    def apply(tenant_id: str, weight: float) -> None:
        if weight > 0:
            inner.notify(TenantWeight(tenant_id, weight))

    return apply


def fair_share_of(inner: Any) -> FairShare | None:
    """The fair-share counters of a weighted policy (`--policy legato`), if it keeps any."""
    fair = getattr(getattr(inner, "policy", None), "fair", None)
    return fair if isinstance(fair, FairShare) else None


def build_state(
    config: ServerConfig,
    engine: Engine | Sequence[Engine],
    registry: ToolRegistry,
    *,
    store: RunStore | None = None,
) -> ServerState:
    store = (
        store
        if store is not None
        else open_store(
            str(config.db_path) if config.db_path else None,
            config.redis_url,
            config.redis_prefix,
            config.lease_s,
        )
    )
    engines = as_replicas(engine)
    if not engines:
        raise ValueError("the service needs at least one engine")
    quotas = QuotaTracker()
    inner = make_scheduler(engines, config.policy)
    scheduler = MeteredScheduler(inner, quotas)
    calls = RedisCallBoard(store) if isinstance(store, RedisRunStore) else None
    tools = ToolRuntime(registry, client=ClientToolBroker(calls))
    if calls is not None:
        calls.broker = tools.client
    speculation = parse_program_spec(config.program_spec)
    executor = Executor(scheduler, tools, journal=store, speculation=speculation)
    limit = max_model_len_of(engines[0])
    runs = RunManager(
        store,
        executor,
        quotas,
        config.limits,
        registry,
        limit,
        set_weight=weight_setter(inner),
    )
    shared = isinstance(store, RedisRunStore)
    fair = fair_share_of(inner)
    return ServerState(
        config=config,
        engine=engines[0],
        scheduler=scheduler,
        store=store,
        tenants=TenantRegistry(store, config.single_tenant, config.default_max_concurrent_runs),
        quotas=quotas,
        tools=tools,
        executor=executor,
        runs=runs,
        inner_scheduler=inner,
        engines=engines,
        calls=calls,
        usage=RedisUsage(store, quotas) if shared else None,
        fair=RedisFairShare(store, fair) if shared and fair is not None else None,
    )
