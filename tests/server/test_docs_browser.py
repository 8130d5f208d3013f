"""Headless Chromium (the Debian package, through Selenium and its chromedriver) renders `/docs`
and `/redoc` of both servers with the network cut off: Swagger UI lists every path of the
OpenAPI document, ReDoc every operation, and every script and stylesheet comes from the server
itself (the assets ship in the `fastapi-offline` wheel). The REST service's Swagger page has an
Authorize button (its bearer security scheme)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from legato.engine_adapter.server import create_engine_app
from legato.server.app import create_app
from legato.server.config import ServerConfig
from legato.server.state import build_state
from legato.tools.registry import ToolRegistry
from tests.server.serving import serve_in_thread, tiny_engine

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (make test installs them as root)",
)
OFFLINE = [
    "--proxy-server=http://127.0.0.1:9",  # anything not on loopback goes to a closed port
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",  # and no name resolves
]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tmp_path_factory.mktemp("chromium-profile")
    for arg in [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        *OFFLINE,
    ]:
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def _wait_for(driver: webdriver.Chrome, css: str, timeout_s: float = 60.0) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    while not driver.find_elements(By.CSS_SELECTOR, css):
        assert time.monotonic() < deadline, f"{driver.current_url} never showed {css!r}"
        time.sleep(0.1)
    time.sleep(0.3)  # the first element is there: let the rest of the list render
    return driver.find_elements(By.CSS_SELECTOR, css)


def _requests(driver: webdriver.Chrome) -> list[tuple[str, str]]:
    """(resource type, URL) of every http(s) request the pages made since the last call."""
    out = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            url = message["params"]["request"]["url"]
            if url.startswith(("http://", "https://")):
                out.append((message["params"].get("type", "Other"), url))
    return out


def _check_docs(driver: webdriver.Chrome, url: str, *, authorize: bool) -> None:
    spec = httpx.get(f"{url}/openapi.json", timeout=30).json()
    operations = sum(1 for item in spec["paths"].values() for method in item if method != "parameters")
    driver.get_log("performance")  # drop what came before
    driver.get(f"{url}/docs")
    shown = {e.get_attribute("data-path") for e in _wait_for(driver, ".opblock-summary [data-path]")}
    assert shown == set(spec["paths"])
    assert bool(driver.find_elements(By.CSS_SELECTOR, ".btn.authorize")) is authorize
    driver.get(f"{url}/redoc")
    sections = _wait_for(driver, "[data-section-id^='operation/']")
    assert len({e.get_attribute("data-section-id") for e in sections}) == operations
    outside = [(kind, u) for kind, u in _requests(driver) if not u.startswith(url)]
    # ReDoc's "API docs by Redocly" footer logo is the one outside image; it fails, nothing else needs it
    assert all(kind == "Image" for kind, _ in outside), outside


def test_rest_service_docs_render_offline(browser: webdriver.Chrome, tmp_path: Path) -> None:
    state = build_state(ServerConfig(db_path=tmp_path / "docs.db"), tiny_engine(), ToolRegistry())
    with serve_in_thread(create_app(state)) as url:
        _check_docs(browser, url, authorize=True)


def test_engine_server_docs_render_offline(browser: webdriver.Chrome) -> None:
    with serve_in_thread(create_engine_app(tiny_engine())) as url:
        _check_docs(browser, url, authorize=False)
