"""Fixtures: the fake engine served on a real socket (module-scoped: one server per file)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from legato.engine_adapter.server import create_engine_app
from tests.engine_http.fake_engine import FakeEngine
from tests.engine_http.serving import serve_in_thread


@pytest.fixture(scope="module")
def fake_engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture(scope="module")
def fake_url(fake_engine: FakeEngine) -> Iterator[str]:
    with serve_in_thread(create_engine_app(fake_engine)) as url:
        yield url


@pytest.fixture(scope="module")
def slow_engine() -> FakeEngine:
    """Emits a token every 50 ms: long enough to abort or disconnect mid-stream."""
    return FakeEngine(token_delay_s=0.05)


@pytest.fixture(scope="module")
def slow_url(slow_engine: FakeEngine) -> Iterator[str]:
    with serve_in_thread(create_engine_app(slow_engine)) as url:
        yield url
