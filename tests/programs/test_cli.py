"""`legato run FILE` (with the test-double engine) and `legato schema`."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from typer.testing import CliRunner

from legato.cli import app
from legato.programs.spec import ProgramSpec

ENGINE = ["--engine", "tests.doubles.engines:make_engine"]

GRAPH_FILE = """
import legato
from legato import Program, llm, ref, tool_node
from legato.tools.registry import ToolRegistry

registry = ToolRegistry()

@legato.tool(name="shout", registry=registry)
async def shout(text: str) -> str:
    return text.upper()

p = Program({"q": "replace", "a": "replace", "b": "replace"}, name="cli_graph")
p.add_node("ask", llm(slots=["q"], output="a"))
p.add_node("shout", tool_node("shout", args={"text": ref("a")}, output="b"))
p.add_edge("ask", "shout")
program = p.compile(registry)

def inputs():
    return {"q": "hello"}
"""

AGENT_FILE = """
import legato

@legato.agent
async def echo(ctx, word: str, times: int = 2):
    return [await ctx.llm(word, label="say") for _ in range(times)]

inputs = {"word": "hi"}
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_run_graph_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", str(_write(tmp_path, "g.py", GRAPH_FILE)), *ENGINE, "--events"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["status"] == "succeeded" and summary["steps"] == 2
    assert summary["output"]["b"] == summary["output"]["a"].upper()
    assert "[node_started] ask" in result.stderr


def test_run_agent_file_with_input_override(tmp_path: Path) -> None:
    path = _write(tmp_path, "a.py", AGENT_FILE)
    result = CliRunner().invoke(app, ["run", str(path), *ENGINE, "--input", "times=3"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["program"] == "echo" and len(summary["output"]) == 3


def test_run_json_spec_and_bad_files(tmp_path: Path) -> None:
    spec = {
        "name": "from_json",
        "state": [{"name": "q"}, {"name": "a"}],
        "nodes": [{"kind": "llm", "name": "n", "prompt": {"slots": [{"var": "q"}]}, "output": "a"}],
        "entry": "n",
    }
    path = tmp_path / "p.json"
    path.write_text(json.dumps(spec))
    result = CliRunner().invoke(app, ["run", str(path), *ENGINE, "--inputs-json", '{"q": "x"}'])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["output"]["q"] == "x"

    bad = _write(tmp_path, "bad.py", "x = 1\n")
    result = CliRunner().invoke(app, ["run", str(bad), *ENGINE])
    assert result.exit_code == 2 and "define `program = ...`" in result.stderr
    result = CliRunner().invoke(app, ["run", str(path), "--engine", "nonsense"])
    assert result.exit_code == 2 and "module:factory" in result.stderr

    spec["nodes"][0]["prompt"] = {"slots": [{"var": "missing"}]}  # type: ignore[index]
    path.write_text(json.dumps(spec))
    result = CliRunner().invoke(app, ["run", str(path), *ENGINE])
    assert result.exit_code == 2 and "'missing'" in result.stderr


def test_failed_run_exits_1(tmp_path: Path) -> None:
    path = _write(tmp_path, "f.py", AGENT_FILE.replace("return [", "raise RuntimeError('nope'); return ["))
    result = CliRunner().invoke(app, ["run", str(path), *ENGINE])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["error"] == "RuntimeError: nope"


def test_schema_command(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == ProgramSpec.model_json_schema()
    out = tmp_path / "schema.json"
    assert CliRunner().invoke(app, ["schema", "--out", str(out)]).exit_code == 0
    assert json.loads(out.read_text())["title"] == "ProgramSpec"


def test_unknown_tool_is_reported_before_running(tmp_path: Path) -> None:
    text = GRAPH_FILE.replace('tool_node("shout"', 'tool_node("whisper"').replace(
        "p.compile(registry)", "p.compile()"
    )
    result = CliRunner().invoke(app, ["run", str(_write(tmp_path, "u.py", text)), *ENGINE])
    assert result.exit_code == 2 and "unknown tool 'whisper'" in result.stderr


def test_run_on_replicas_with_the_default_policy(tmp_path: Path) -> None:
    """Two `--engine` flags: two replicas under the default policy (legato); passthrough drives
    one engine only, and says so."""
    path = _write(tmp_path, "a.py", AGENT_FILE)
    result = CliRunner().invoke(app, ["run", str(path), *ENGINE, *ENGINE, "--input", "times=3"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == "succeeded"
    result = CliRunner().invoke(app, ["run", str(path), *ENGINE, *ENGINE, "--policy", "passthrough"])
    assert result.exit_code == 2 and "drives one engine" in result.stderr
    result = CliRunner().invoke(app, ["run", str(path), *ENGINE, "--policy", "nope"])
    assert result.exit_code == 2 and "unknown policy 'nope'" in result.stderr
