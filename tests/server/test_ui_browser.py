"""The operator page end to end: `legato serve` (a real subprocess: tiny seeded torch engine, the
`legato` policy, two tenants, an admin key) runs a declarative program that waits in a client
tool (until the test, having seen that on the page, posts the result: no race with the page's
polls) and an agent that keeps calling through the proxy with the official `openai` client; headless
Chromium, network cut off, opens `/ui`, is asked for a key, gets the admin key, and shows the
replicas panel, the running programs and each tenant's share, all updating while the agent
works; a program's page draws its graph with each node's state and redraws when the run moves
on. Screenshots go to `$LEGATO_TEST_ARTIFACTS` (else the test's tmp dir); with
`LEGATO_UI_SCREENSHOT=PATH` the overview is also saved there (how docs/ui.png is made)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from openai import OpenAI
from selenium import webdriver
from selenium.webdriver.common.by import By

from tests.server.browser import chromium, needs_chromium, requests_made, wait_for
from tests.server.programs import gated_program
from tests.server.proxy_harness import add_tenants
from tests.server.serving import TOOLS_FILE, ServeProcess

pytestmark = [needs_chromium, pytest.mark.slow]
ADMIN_KEY = "lg_operator-admin-key-for-the-ui-test"


class Agent(threading.Thread):
    """An agent through the proxy with the official client: a call, a short tool, the next call."""

    def __init__(self, url: str, key: str, program_id: str) -> None:
        super().__init__(daemon=True)
        self.client = OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)
        self.program_id = program_id
        self.stop = threading.Event()
        self.calls = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        messages = [{"role": "system", "content": "You are a coding agent."}]
        try:
            while not self.stop.is_set():
                messages.append({"role": "user", "content": f"pytest output {self.calls}: 1 failed"})
                reply = self.client.chat.completions.create(
                    model="legato-default",
                    messages=messages,  # type: ignore[arg-type]
                    max_tokens=4,
                    temperature=0,
                    extra_body={"program_id": self.program_id, "next_tool": "pytest"},
                )
                messages.append({"role": "assistant", "content": reply.choices[0].message.content or ""})
                messages = messages[:1] + messages[-6:]  # bounded context
                self.calls += 1
                self.stop.wait(0.3)
        except BaseException as exc:  # reported by the test
            self.error = exc


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    where = Path(os.environ.get("LEGATO_TEST_ARTIFACTS", tmp_path / "artifacts"))
    where.mkdir(parents=True, exist_ok=True)
    return where


@pytest.fixture
def server(tmp_path: Path, redis_url: str) -> Iterator[tuple[str, dict[str, str]]]:
    db = tmp_path / "ui.db"
    keys = {name: key for name, (_, key) in anyio.run(add_tenants, db, ("acme", "globex")).items()}
    engine = "tests.server.serving:tiny_tiered_engine"
    args = ["--db", str(db), "--engine", engine, "--tools", str(TOOLS_FILE)]
    env = {"LEGATO_ADMIN_KEY": ADMIN_KEY, "LEGATO_TEST_KV_REDIS": redis_url}
    proc = ServeProcess([*args, "--policy", "legato"], tmp_path / "serve.log", env=env)
    try:
        yield proc.start(), keys
    finally:
        proc.stop()


# The page redraws every second, so elements are read and clicked in one script (a Selenium
# element handle found a moment earlier may already be stale).
def _text(driver: webdriver.Chrome, css: str) -> str:
    script = "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent).join(' ')"
    return str(driver.execute_script(script, css))


def _attr(driver: webdriver.Chrome, css: str, name: str) -> str | None:
    script = "const e = document.querySelector(arguments[0]); return e && e.getAttribute(arguments[1])"
    value = driver.execute_script(script, css, name)
    return None if value is None else str(value)


def _click(driver: webdriver.Chrome, css: str) -> None:
    script = "const e = document.querySelector(arguments[0]); e && e.click(); return !!e"
    assert driver.execute_script(script, css)


def _until(check: object, what: str, timeout_s: float = 60.0, shown: object = None) -> None:
    """Poll `check` (the page redraws every second); on timeout say what `shown` returns."""
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"the page never showed {what}" + (f"; it shows {shown()!r}" if shown else ""))  # type: ignore[operator]
        time.sleep(0.2)


def test_the_operator_page_shows_live_replicas_programs_and_tenants(
    server: tuple[str, dict[str, str]], tmp_path: Path, artifacts: Path
) -> None:
    url, keys = server
    acme = {"Authorization": f"Bearer {keys['acme']}"}
    agent = Agent(url, keys["globex"], "globex-coder")
    agent.start()
    try:
        with chromium(tmp_path / "profile") as driver:
            requests_made(driver)
            driver.get(f"{url}/ui")
            wait_for(driver, "#key-form:not([hidden])")  # tenants exist: the data needs a key
            driver.find_element(By.ID, "key-input").send_keys(ADMIN_KEY)
            driver.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
            wait_for(driver, "#replicas .replica[data-replica='0']")
            assert "admin" in _text(driver, "#viewer") and "legato" in _text(driver, "#policy")
            for tier in ("device", "host", "redis"):  # the KV tiers of the replica
                assert tier in _text(driver, "#replicas .kv")
            _until(lambda: "globex-coder" in _text(driver, "#programs tbody"), "the proxy agent")
            # the declarative run starts once the page is up: it reaches its tool within a poll
            inputs = {"topic": "tiers", "record_file": str(tmp_path / "rec.log")}
            program = gated_program("ask_client")
            created = httpx.post(
                f"{url}/v1/runs", json={"program": program, "inputs": inputs}, headers=acme, timeout=60
            )
            assert created.status_code == 201, created.text
            run_id = created.json()["id"]
            row = f"#programs tr[data-run='{run_id}']"
            wait_for(driver, row)
            # It stays in its tool until the test posts the result (below). The `legato` policy
            # holds its KV through the tool for a cost-derived TTL (about 20 s here) and then
            # releases it, a whole-program pause: the row reads one of the two, never anything
            # else, however long a loaded machine takes to get here.
            _until(
                lambda: any(s in _text(driver, row) for s in ("waiting for client tool", "paused")),
                "the run waiting in its tool",
                shown=lambda: (_text(driver, row), httpx.get(f"{url}/v1/runs/{run_id}", headers=acme).text),
            )
            shares = "#tenants tr[data-tenant] .share-value"
            _until(lambda: len(driver.find_elements(By.CSS_SELECTOR, shares)) == 2, "both tenants' shares")
            globex_tokens = "#tenants tr[data-tenant='globex'] td:nth-child(4)"
            first_tokens, first_stamp = _text(driver, globex_tokens), _attr(driver, "#updated", "data-at")
            _until(lambda: _text(driver, globex_tokens) != first_tokens, "globex's service grow")
            assert _attr(driver, "#updated", "data-at") != first_stamp
            assert "%" in _text(driver, "#tenants tr[data-tenant='globex'] .share-value")
            assert "running" in _text(driver, "#replicas") and "prefix hit" in _text(driver, "#replicas")
            admits = "#decisions li[data-kind='admit']"
            _until(lambda: driver.find_elements(By.CSS_SELECTOR, admits), "the scheduler's admits")
            driver.save_screenshot(str(artifacts / "ui-overview.png"))
            if os.environ.get("LEGATO_UI_SCREENSHOT"):
                driver.save_screenshot(os.environ["LEGATO_UI_SCREENSHOT"])

            _click(driver, row)
            wait_for(driver, "#graph g.node[data-node='wait'][data-state='running']")
            assert _attr(driver, "#graph g.node[data-node='draft']", "data-state") == "ok"
            assert "draft" in _text(driver, "#journal")
            _until(lambda: "tool_started" in _text(driver, "#events"), "the tool's start in the events")
            driver.save_screenshot(str(artifacts / "ui-run.png"))

            # the tool returns; the run goes on to its last node and ends
            def pending() -> list[dict[str, str]]:
                run = httpx.get(f"{url}/v1/runs/{run_id}", headers=acme, timeout=60).json()
                return list(run["pending_tool_calls"])

            _until(pending, "the run's pending client call (API)")
            call = {"call_id": pending()[0]["call_id"], "output": "go on"}
            posted = httpx.post(f"{url}/v1/runs/{run_id}/tool_results", json=call, headers=acme, timeout=60)
            assert posted.status_code == 200, posted.text
            wait_for(driver, "#graph g.node[data-node='final'][data-state='ok']")
            _until(lambda: "succeeded" in _text(driver, "#run-status"), "the run finish")
            outside = [u for _, u in requests_made(driver) if not u.startswith(url)]
            assert not outside, outside
    finally:
        agent.stop.set()
        agent.join(timeout=60)
    assert agent.error is None, agent.error
    assert agent.calls >= 2
