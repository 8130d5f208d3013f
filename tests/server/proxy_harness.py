"""The whole REST app (`create_app(build_state(...))`) on a real uvicorn socket, with API keys for a
few tenants, for the proxy, metrics and fuzz tests."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx

from legato.engine_adapter.base import Engine
from legato.server.app import create_app
from legato.server.auth import TenantRegistry
from legato.server.config import ServerConfig
from legato.server.state import ServerState, build_state
from legato.server.store import open_store
from legato.tools.registry import ToolRegistry
from tests.engine_http.serving import serve_in_thread


@dataclass
class Served:
    url: str
    keys: dict[str, str]  # tenant name -> API key
    tenant_ids: dict[str, str]  # tenant name -> tenant id
    state: ServerState

    def headers(self, tenant: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[tenant]}"}


async def add_tenants(db: Path, names: Sequence[str]) -> dict[str, tuple[str, str]]:
    store = open_store(str(db), None)
    await store.open()
    try:
        registry = TenantRegistry(store, "auto", 64)
        out = {}
        for name in names:
            tenant, key = await registry.add(name, max_concurrent_runs=256)
            out[name] = (tenant.id, key)
        return out
    finally:
        await store.close()


@contextmanager
def legato_server(
    tmp: Path,
    engine: Engine,
    *,
    policy: str | None = "continuum",
    tenants: Sequence[str] = ("acme", "globex"),
    registry: ToolRegistry | None = None,
    **config: Any,
) -> Iterator[Served]:
    """`config`: further `ServerConfig` fields (e.g. `admin_key`)."""
    db = tmp / "legato.db"
    made = anyio.run(add_tenants, db, tenants)
    state = build_state(ServerConfig(db_path=db, policy=policy, **config), engine, registry or ToolRegistry())
    with serve_in_thread(create_app(state)) as url:
        yield Served(
            url,
            {name: key for name, (_, key) in made.items()},
            {name: tid for name, (tid, _) in made.items()},
            state,
        )


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 when there are none)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$", line)
        if m is None or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(4))
    return total


def scrape(url: str) -> str:
    response = httpx.get(f"{url}/metrics", timeout=30)
    response.raise_for_status()
    return response.text
