"""`legato serve` (the REST service) and `legato tenants add|list|remove`.

Both read the same store: `--db FILE` (SQLite, default `legato.db`, env `LEGATO_DB`) or
`--redis-url URL` (env `LEGATO_REDIS_URL`), so `legato tenants add` works while a server runs.
Heavy imports (torch, fastapi, uvicorn) stay inside the command bodies.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from legato.engine_adapter.commands import (
    KvHostGbOpt,
    KvRedisOpt,
    ReadTimeoutOpt,
    TrustedProxiesOpt,
    bind_socket,
    tier_overrides,
)
from legato.scheduler.by_name import DEFAULT_POLICY

tenants_app = typer.Typer(
    name="tenants", help="API keys and quotas of the REST service's tenants.", no_args_is_help=True
)

DbOpt = Annotated[Path, typer.Option("--db", envvar="LEGATO_DB", help="SQLite store file.")]
RedisOpt = Annotated[
    str | None, typer.Option("--redis-url", envvar="LEGATO_REDIS_URL", help="Redis store (instead of --db).")
]
PrefixOpt = Annotated[
    str, typer.Option("--redis-prefix", envvar="LEGATO_REDIS_PREFIX", help="Key prefix in Redis.")
]


def _store(db: Path, redis_url: str | None, prefix: str = "legato:") -> Any:
    from legato.server.store import open_store

    return open_store(str(db), redis_url, prefix)


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0 = any free port).")] = 8080,
    db: DbOpt = Path("legato.db"),
    redis_url: RedisOpt = None,
    redis_prefix: PrefixOpt = "legato:",
    tools: Annotated[
        str | None,
        typer.Option(
            help="Tools programs may call: a .py file (its `registry` or @legato.tool tools) "
            "or 'package.module:registry'."
        ),
    ] = None,
    engine: Annotated[
        list[str] | None,
        typer.Option(
            help="A replica, repeatable (default: one 'torch'): 'torch[:device=cuda:1]' (embedded), "
            "'vllm=URL', 'sglang=URL' (a server speaking that API, e.g. `legato engine serve`), "
            "'sim-realtime[:gpu=h100,model=llama-3.1-8b,time_scale=1]' (simulated GPU in real time, "
            "for load tests) or 'package.module:factory'. Several give several replicas, routed "
            "by the policy (program and RL-group affinity, work stealing).",
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="HF checkpoint dir of the torch engines (default: seeded model); its tokenizer "
            "is also the one vllm= / sglang= engines use."
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="torch device: cpu, cuda, cuda:N.")] = "cpu",
    kv_host_gb: KvHostGbOpt = 0.0,
    kv_redis_url: KvRedisOpt = None,
    policy: Annotated[
        str,
        typer.Option(
            help="Scheduling policy: legato (program-level scheduling), another `legato bench` "
            "policy, or passthrough (one engine batches on its own)."
        ),
    ] = DEFAULT_POLICY,
    single_tenant: Annotated[
        str,
        typer.Option(
            help="auto: keyless localhost requests act as tenant 'default' while no tenants "
            "exist; on: always (localhost only); off: always require a key."
        ),
    ] = "auto",
    max_body_bytes: Annotated[int, typer.Option(min=1024, help="Largest request body.")] = 1_000_000,
    max_prompt_chars: Annotated[int, typer.Option(min=1, help="Longest string input.")] = 100_000,
    max_concurrent_runs: Annotated[
        int, typer.Option(min=1, help="Concurrent runs of the keyless default tenant.")
    ] = 64,
    log_level: Annotated[str, typer.Option(help="Log level (JSON lines on stderr).")] = "info",
    trusted_proxies: TrustedProxiesOpt = None,
    read_timeout: ReadTimeoutOpt = 60.0,
    drain_timeout: Annotated[
        float,
        typer.Option(
            min=0,
            help="On SIGTERM: /readyz goes 503, no new runs, and steps in flight get this many "
            "seconds to finish before the server stops (runs left resume on the next start).",
        ),
    ] = 30.0,
    lease_s: Annotated[
        float,
        typer.Option(
            min=0.2,
            help="With --redis-url (several instances may share it): a run's owner renews its "
            "lease every lease/3 s; if it dies, another instance takes the run over after this.",
        ),
    ] = 10.0,
    program_spec: Annotated[
        str,
        typer.Option(
            help="Program-level speculation of runs: on, off, or a '+' list of prefill, early, predicted."
        ),
    ] = "off",
) -> None:
    """Serve the REST workflow API (/v1/programs, /v1/runs with SSE events), /healthz, /readyz.

    OpenAPI docs at /docs, the operator page at /ui (LEGATO_ADMIN_KEY in the environment sets
    a key that sees every tenant there). Runs, programs and tenants persist in --db (SQLite) or
    --redis-url; a restarted server resumes the runs that were in flight."""
    if single_tenant not in ("auto", "on", "off"):
        raise typer.BadParameter("use auto, on or off", param_hint="--single-tenant")
    from legato.programs.speculation import parse_program_spec

    try:
        parse_program_spec(program_spec)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--program-spec") from None
    import anyio

    from legato.engine_adapter.base import EngineError
    from legato.engine_adapter.server.http_server import http_config
    from legato.launch import LaunchError, TorchOptions, build_engines, parse_engine_spec
    from legato.server.logs import setup_logging
    from legato.server.tools import ToolsLoadError, load_registry

    setup_logging(log_level)
    try:
        for text in engine or []:
            parse_engine_spec(text)  # a malformed --engine is refused before the heavy imports
        registry = load_registry(tools)
        torch_options = TorchOptions(checkpoint, device, tier_overrides(kv_host_gb, kv_redis_url))
        engines = build_engines(engine or [], torch_options)
    except (ToolsLoadError, LaunchError, EngineError) as exc:
        typer.echo(f"legato serve: {exc}", err=True)
        raise typer.Exit(2) from None
    from legato.server.app import create_app
    from legato.server.config import Limits, ServerConfig
    from legato.server.state import build_state

    config = ServerConfig(
        host=host,
        port=port,
        db_path=db,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        lease_s=lease_s,
        single_tenant=single_tenant,  # type: ignore[arg-type]
        default_max_concurrent_runs=max_concurrent_runs,
        policy=policy,
        program_spec=program_spec,
        limits=Limits(max_body_bytes=max_body_bytes, max_prompt_chars=max_prompt_chars),
        admin_key=os.environ.get("LEGATO_ADMIN_KEY") or None,  # sees every tenant on /ui
    )
    try:
        state = build_state(config, engines, registry)
        state.store.claim()  # refuse early, with a clear message, if another server has this store
    except (ValueError, RuntimeError) as exc:
        typer.echo(f"legato serve: {exc}", err=True)
        raise typer.Exit(2) from None
    sock = bind_socket(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    app = create_app(state)
    from legato.server.draining import DrainingServer

    http = http_config(
        app,
        read_timeout_s=read_timeout,
        trusted_proxies=trusted_proxies,
        log_level="warning",
        timeout_graceful_shutdown=5,
    )
    server = DrainingServer(http, state, drain_timeout)
    where = f"redis {redis_url}" if redis_url else f"sqlite {db}"
    replicas = ", ".join(getattr(e, "model_name", "?") for e in engines)
    typer.echo(
        f"Legato serving at http://{shown}:{bound_port} (policy {policy}; replicas: {replicas}; "
        f"store: {where}; docs at /docs, operator page at /ui)"
    )
    import sys

    sys.stdout.flush()  # tests and supervisors wait for this line
    from legato.engine_adapter.server.gc_tuning import settle_heap

    settle_heap()  # start-up objects are permanent: no collection walks them again
    anyio.run(server.serve, [sock])


@tenants_app.command("add")
def tenants_add(
    name: Annotated[str, typer.Argument(help="Tenant name (unique).")],
    weight: Annotated[
        float, typer.Option(min=0.001, help="Fair-share weight (with a fair-share --policy such as legato).")
    ] = 1.0,
    max_concurrent_runs: Annotated[int, typer.Option(min=1, help="Runs in flight at once.")] = 64,
    tokens_per_minute: Annotated[
        int | None, typer.Option(min=1, help="Prompt + output tokens per minute (default: unlimited).")
    ] = None,
    admin: Annotated[
        bool,
        typer.Option(
            "--admin",
            help="The key may also call the control plane (weight updates, pause / resume, "
            "abort all): an RL trainer's key. Other keys get 403 there.",
        ),
    ] = False,
    db: DbOpt = Path("legato.db"),
    redis_url: RedisOpt = None,
    redis_prefix: PrefixOpt = "legato:",
) -> None:
    """Create a tenant and print its API key (shown once: only its hash is stored)."""
    import re

    import anyio

    from legato.server.auth import TenantRegistry
    from legato.server.store import DuplicateError

    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        raise typer.BadParameter("use 1-64 letters, digits, '_', '-' or '.'", param_hint="NAME")

    async def add() -> tuple[Any, str]:
        store = _store(db, redis_url, redis_prefix)
        await store.open()
        try:
            return await TenantRegistry(store, "off", 64).add(
                name,
                weight=weight,
                max_concurrent_runs=max_concurrent_runs,
                tokens_per_minute=tokens_per_minute,
                admin=admin,
            )
        finally:
            await store.close()

    try:
        tenant, key = anyio.run(add)
    except DuplicateError as exc:
        typer.echo(f"legato tenants add: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"tenant {tenant.name} ({tenant.id}) created; its API key (shown only now):", err=True)
    typer.echo(key)


@tenants_app.command("list")
def tenants_list(
    db: DbOpt = Path("legato.db"), redis_url: RedisOpt = None, redis_prefix: PrefixOpt = "legato:"
) -> None:
    """List tenants (never their keys) as JSON lines."""
    import anyio

    async def list_all() -> list[Any]:
        store = _store(db, redis_url, redis_prefix)
        await store.open()
        try:
            return list(await store.list_tenants())
        finally:
            await store.close()

    for t in anyio.run(list_all):
        typer.echo(json.dumps(t.model_dump(exclude={"key_hash"})))


@tenants_app.command("remove")
def tenants_remove(
    name: Annotated[str, typer.Argument(help="Tenant name.")],
    db: DbOpt = Path("legato.db"),
    redis_url: RedisOpt = None,
    redis_prefix: PrefixOpt = "legato:",
) -> None:
    """Delete a tenant: its key stops working at once (its runs and programs stay stored)."""
    import anyio

    async def remove() -> bool:
        store = _store(db, redis_url, redis_prefix)
        await store.open()
        try:
            return bool(await store.remove_tenant(name))
        finally:
            await store.close()

    if not anyio.run(remove):
        typer.echo(f"legato tenants remove: no tenant named {name!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"removed tenant {name}")


def register(app: typer.Typer) -> None:
    """Add `legato serve` and `legato tenants ...` to `app`."""
    app.command("serve")(serve)
    app.add_typer(tenants_app)
