"""A live `legato serve` app (real socket, tiny seeded torch engine) for the RL tests."""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from legato.engine_adapter.torch import load_engine
from legato.server.app import create_app
from legato.server.config import ServerConfig
from legato.server.state import ServerState, build_state
from legato.tools.registry import ToolRegistry
from tests.rl.helpers import LONG_CONTEXT
from tests.server.serving import TOOLS_FILE, serve_in_thread, tiny_engine
from tests.tiny_model import tiny_model_config


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    torch.set_num_threads(1)  # 2 shared cores: avoid oversubscription


def _registry() -> ToolRegistry:
    spec = importlib.util.spec_from_file_location(f"rl_tools_{uuid.uuid4().hex[:6]}", TOOLS_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    registry = module.registry
    assert isinstance(registry, ToolRegistry)
    return registry


@pytest.fixture(params=["passthrough", "legato"])
def rl_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, ServerState]]:
    """`legato serve` with the passthrough scheduler and with Legato's policy."""
    policy = None if request.param == "passthrough" else request.param
    config = replace(ServerConfig(db_path=tmp_path / "rl.db"), policy=policy)
    state = build_state(config, tiny_engine(), _registry())
    with serve_in_thread(create_app(state)) as url:
        yield url, state


@pytest.fixture
def one_server(tmp_path: Path) -> Iterator[tuple[str, ServerState]]:
    config = replace(ServerConfig(db_path=tmp_path / "rl1.db"), policy="legato")
    state = build_state(config, tiny_engine(), _registry())
    with serve_in_thread(create_app(state)) as url:
        yield url, state


@pytest.fixture
def long_server(tmp_path: Path) -> Iterator[tuple[str, ServerState]]:
    """`one_server` with a `LONG_CONTEXT`-position tiny model and the blocks to fill it."""
    config = replace(ServerConfig(db_path=tmp_path / "rl-long.db"), policy="legato")
    engine = load_engine(
        model_config=tiny_model_config(max_position_embeddings=LONG_CONTEXT),
        num_blocks=LONG_CONTEXT // 16 + 8,
        max_num_batched_tokens=256,
    )
    state = build_state(config, engine, _registry())
    with serve_in_thread(create_app(state)) as url:
        yield url, state
