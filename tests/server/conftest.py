"""Fixtures for the REST service tests: a live app on a real socket (uvicorn thread, SQLite file
in tmp_path, tiny seeded torch engine, the test tools), and Redis: REDIS_URL when set, else a
private redis-server started by pytest-redis on a free port (never the machine's own Redis)."""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from pytest_redis import factories

from legato.server.app import create_app
from legato.server.config import Limits, ServerConfig
from legato.server.state import ServerState, build_state
from legato.tools.registry import ToolRegistry
from tests.server.serving import TOOLS_FILE, serve_in_thread, tiny_engine

server_redis_proc = factories.redis_proc(port=None)  # type: ignore[arg-type]  # None: any free port

MakeServerFactory = Callable[..., AbstractContextManager[tuple[str, ServerState]]]


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    torch.set_num_threads(1)  # 2 shared cores: avoid oversubscription


def load_test_registry() -> ToolRegistry:
    spec = importlib.util.spec_from_file_location(f"server_tools_{uuid.uuid4().hex[:6]}", TOOLS_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    registry = module.registry
    assert isinstance(registry, ToolRegistry)
    return registry


@pytest.fixture
def redis_url(request: pytest.FixtureRequest) -> str:
    url = os.environ.get("REDIS_URL")
    if url is None:
        proc = request.getfixturevalue("server_redis_proc")
        url = f"redis://{proc.host}:{proc.port}/0"
    return url


@pytest.fixture
def make_server(tmp_path: Path) -> MakeServerFactory:
    """`with make_server(**config) as (url, state)`: a live server on a real socket."""

    @contextmanager
    def make(**overrides: Any) -> Iterator[tuple[str, ServerState]]:
        limits = overrides.pop("limits", Limits())
        config = replace(
            ServerConfig(db_path=tmp_path / f"{uuid.uuid4().hex[:6]}.db"), limits=limits, **overrides
        )
        state = build_state(config, tiny_engine(), load_test_registry())
        with serve_in_thread(create_app(state)) as url:
            yield url, state

    return make


@pytest.fixture
def server(
    make_server: Callable[..., AbstractContextManager[tuple[str, ServerState]]],
) -> Iterator[tuple[str, ServerState]]:
    with make_server() as live:
        yield live


@pytest.fixture
def client(server: tuple[str, ServerState]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server[0], timeout=30) as c:
        yield c
