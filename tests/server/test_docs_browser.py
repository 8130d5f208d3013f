"""Headless Chromium (the Debian package, through Selenium and its chromedriver) renders `/docs`
and `/redoc` of both servers with the network cut off: Swagger UI lists every path of the
OpenAPI document, ReDoc every operation, and every script and stylesheet comes from the server
itself (the assets ship in the `fastapi-offline` wheel). The REST service's Swagger page has an
Authorize button (its bearer security scheme)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from legato.engine_adapter.server import create_engine_app
from legato.server.app import create_app
from legato.server.config import ServerConfig
from legato.server.state import build_state
from legato.tools.registry import ToolRegistry
from tests.server.browser import chromium, needs_chromium, requests_made, wait_for
from tests.server.serving import serve_in_thread, tiny_engine

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    with chromium(tmp_path_factory.mktemp("chromium-profile")) as driver:
        yield driver


def _check_docs(driver: webdriver.Chrome, url: str, *, authorize: bool) -> None:
    spec = httpx.get(f"{url}/openapi.json", timeout=30).json()
    operations = sum(1 for item in spec["paths"].values() for method in item if method != "parameters")
    driver.get_log("performance")  # drop what came before
    driver.get(f"{url}/docs")
    summaries = wait_for(driver, ".opblock-summary [data-path]", count=operations)
    shown = {e.get_attribute("data-path") for e in summaries}
    assert shown == set(spec["paths"])
    assert bool(driver.find_elements(By.CSS_SELECTOR, ".btn.authorize")) is authorize
    driver.get(f"{url}/redoc")
    sections = wait_for(driver, "[data-section-id^='operation/']", count=operations)
    assert len({e.get_attribute("data-section-id") for e in sections}) == operations
    outside = [(kind, u) for kind, u in requests_made(driver) if not u.startswith(url)]
    # ReDoc's "API docs by Redocly" footer logo is the one outside image; it fails, nothing else needs it
    assert all(kind == "Image" for kind, _ in outside), outside


def test_rest_service_docs_render_offline(browser: webdriver.Chrome, tmp_path: Path) -> None:
    state = build_state(ServerConfig(db_path=tmp_path / "docs.db"), tiny_engine(), ToolRegistry())
    with serve_in_thread(create_app(state)) as url:
        _check_docs(browser, url, authorize=True)


def test_engine_server_docs_render_offline(browser: webdriver.Chrome) -> None:
    with serve_in_thread(create_engine_app(tiny_engine())) as url:
        _check_docs(browser, url, authorize=False)
