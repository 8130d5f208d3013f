"""The README's REST example, run exactly as written (bash + curl) against a real `legato serve`
on the default embedded torch engine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.server.serving import ROOT, ServeProcess


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## REST service", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("```", 1)[0] for b in section.split("```bash\n")[1:]]
    return next(b for b in blocks if "curl" in b)


@pytest.mark.skipif(shutil.which("curl") is None, reason="the README example uses curl")
def test_readme_curl_flow(tmp_path: Path) -> None:
    server = ServeProcess(["--db", str(tmp_path / "legato.db")], tmp_path / "serve.log")
    try:
        url = server.start()
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", readme_example()],
            env={**os.environ, "LEGATO": url}, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        out = done.stdout.strip().splitlines()
        events = [json.loads(line[6:]) for line in out if line.startswith("data: ")]
        assert events[0]["kind"] == "run_started" and events[-1]["kind"] == "run_finished"
        assert events[-1]["data"]["status"] == "succeeded"
        run = json.loads(out[-1])
        assert run["status"] == "succeeded"
        assert isinstance(run["output"]["answer"], str) and run["output"]["answer"]
        assert [s["node"] for s in run["steps"]] == ["answer"]
        # structured logs: JSON lines naming the run
        logged = [
            json.loads(x) for x in (tmp_path / "serve.log").read_text().splitlines() if x.startswith("{")
        ]
        assert any(entry.get("run_id") == run["id"] and entry["msg"] == "run started" for entry in logged)
        assert any("single-tenant mode" in entry["msg"] for entry in logged)
    finally:
        server.stop()
