"""Headless Chromium for the page tests: Debian's `chromium` and `chromedriver` through Selenium,
with the network cut off (anything not on loopback goes to a closed port and no name resolves),
and the pages' requests readable from the performance log."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (make test installs them as root)",
)
OFFLINE = [
    "--proxy-server=http://127.0.0.1:9",  # anything not on loopback goes to a closed port
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",  # and no name resolves
]


@contextmanager
def chromium(profile: Path, window: str = "1400,1000") -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--window-size={window}",
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


def wait_for(driver: webdriver.Chrome, css: str, timeout_s: float = 60.0, count: int = 1) -> list[Any]:
    """The elements matching `css` once there are at least `count` of them (a page that renders
    a list in pieces is waited for until the whole list is there, not for a fixed time)."""
    deadline = time.monotonic() + timeout_s
    while len(found := driver.find_elements(By.CSS_SELECTOR, css)) < count:
        assert time.monotonic() < deadline, f"{driver.current_url} showed {len(found)} of {count} {css!r}"
        time.sleep(0.1)
    return found


def requests_made(driver: webdriver.Chrome) -> list[tuple[str, str]]:
    """(resource type, URL) of every http(s) request the pages made since the last call."""
    out = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            url = message["params"]["request"]["url"]
            if url.startswith(("http://", "https://")):
                out.append((message["params"].get("type", "Other"), url))
    return out
