"""Subprocess tools, with real processes: no shell, limits, timeouts, kills, workdirs."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import anyio
import pytest

from legato.tools import SubprocessTool, ToolRegistry, ToolRuntime

from .procs import PY, alive, wait_for_file, wait_gone

PRINT_ARGV = "import json, sys; print(json.dumps(sys.argv[1:]))"
HOSTILE = ["; rm -rf / #", "$(touch pwned)", "`touch pwned2`", "a b\tc", "'\"", "|| touch pwned3", "-rf"]


def runtime_with(*tools: SubprocessTool) -> ToolRuntime:
    registry = ToolRegistry()
    for t in tools:
        registry.register(t)
    return ToolRuntime(registry)


async def test_placeholders_are_literal_argv_elements() -> None:
    echo = SubprocessTool("echo_args", [PY, "-c", PRINT_ARGV, "{a}", "--flag={b}", "{a}"])
    shell = SubprocessTool("bash_arg", ["bash", "-c", 'printf "%s" "$1"', "bash", "{a}"])
    async with runtime_with(echo, shell) as rt:
        for value in HOSTILE:
            result = await rt.call("echo_args", {"a": value, "b": value}, run_id="r", call_id="c", tenant="t")
            assert result.ok, result
            assert isinstance(result.output, dict)
            assert json.loads(result.output["stdout"]) == [value, f"--flag={value}", value]

            via_bash = await rt.call("bash_arg", {"a": value}, run_id="r", call_id="c", tenant="t")
            assert isinstance(via_bash.output, dict) and via_bash.output["stdout"] == value
        workdir = (await rt.envs.get("r")).workdir
        assert not [p.name for p in workdir.iterdir() if p.name.startswith("pwned")]


def test_template_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="cannot be a placeholder"):
        SubprocessTool("t", ["{prog}", "x"])
    with pytest.raises(ValueError, match="plain argument name"):
        SubprocessTool("t", ["ls", "{0}"])
    with pytest.raises(ValueError, match="plain argument name"):
        SubprocessTool("t", ["ls", "{a.b}"])
    with pytest.raises(ValueError, match="format spec"):
        SubprocessTool("t", ["ls", "{a!r}"])
    with pytest.raises(ValueError, match="non-empty list"):
        SubprocessTool("t", "ls -l")
    literal = SubprocessTool("t", ["echo", "{{literal}}", "{x}"])
    assert literal.arg_names == ("x",)
    assert literal.build_argv({"x": "1"}) == ["echo", "{literal}", "1"]


async def test_args_must_match_placeholders() -> None:
    tool = SubprocessTool("cat_file", ["cat", "{path}"], stdin_arg="data")
    assert tool.spec.params_schema is not None
    assert tool.spec.params_schema["required"] == ["path", "data"]
    async with runtime_with(tool) as rt:
        missing = await rt.call("cat_file", {"path": "x"}, run_id="r", call_id="c", tenant="t")
        assert missing.error_kind == "bad_args" and "'data'" in (missing.error or "")
        extra = await rt.call(
            "cat_file", {"path": "x", "data": "", "cmd": "rm"}, run_id="r", call_id="c", tenant="t"
        )
        assert extra.error_kind == "bad_args" and "'cmd'" in (extra.error or "")
        nested = await rt.call("cat_file", {"path": ["x"], "data": ""}, run_id="r", call_id="c", tenant="t")
        assert nested.error_kind == "bad_args" and "string or a number" in (nested.error or "")


async def test_stdin_exit_code_and_cwd() -> None:
    script = "import os, sys; data = sys.stdin.read(); print(os.getcwd()); print(data.upper()); sys.exit(3)"
    tool = SubprocessTool("upper", [PY, "-c", script], stdin_arg="text")
    async with runtime_with(tool) as rt:
        result = await rt.call("upper", {"text": "hello"}, run_id="run-a", call_id="c", tenant="t")
        workdir = (await rt.envs.get("run-a")).workdir
    # A non-zero exit is a tool that ran: ok, with the exit code for the model to read.
    assert result.ok and isinstance(result.output, dict)
    assert result.output["exit_code"] == 3
    cwd, text = result.output["stdout"].split()
    assert await anyio.Path(cwd).resolve() == await anyio.Path(workdir).resolve() and text == "HELLO"


async def test_per_run_workdirs_are_private() -> None:
    write = SubprocessTool("write", [PY, "-c", "import sys; open(sys.argv[1], 'w').write('x')", "{name}"])
    ls = SubprocessTool("ls", [PY, "-c", "import os, json; print(json.dumps(sorted(os.listdir('.'))))"])
    async with runtime_with(write, ls) as rt:
        await rt.call("write", {"name": "one.txt"}, run_id="run-1", call_id="a", tenant="t")
        await rt.call("write", {"name": "two.txt"}, run_id="run-2", call_id="a", tenant="t")
        seen1 = await rt.call("ls", {}, run_id="run-1", call_id="b", tenant="t")
        seen2 = await rt.call("ls", {}, run_id="run-2", call_id="b", tenant="t")
        assert isinstance(seen1.output, dict) and isinstance(seen2.output, dict)
        assert json.loads(seen1.output["stdout"]) == ["one.txt"]
        assert json.loads(seen2.output["stdout"]) == ["two.txt"]
        dirs = {(await rt.envs.get(r)).workdir for r in ("run-1", "run-2")}
        assert len(dirs) == 2


async def test_server_secrets_are_not_inherited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEGATO_TEST_SECRET", "s3cret")
    script = "import os; print(os.environ.get('LEGATO_TEST_SECRET', '-'), os.environ['MODE'])"
    tool = SubprocessTool("env", [PY, "-c", script], env={"MODE": "test"})
    async with runtime_with(tool) as rt:
        result = await rt.call("env", {}, run_id="r", call_id="c", tenant="t")
    assert isinstance(result.output, dict) and result.output["stdout"].split() == ["-", "test"]


async def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    # The tool starts a grandchild, records both pids, and sleeps; the timeout must kill both.
    script = (
        "import os, subprocess, sys, time\n"
        "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "open('pids.tmp', 'w').write('%d %d' % (os.getpid(), g.pid))\n"
        "os.rename('pids.tmp', 'pids')\n"
        "time.sleep(60)\n"
    )
    tool = SubprocessTool("sleepy", [PY, "-c", script], timeout=1.5)
    async with runtime_with(tool) as rt:
        with anyio.fail_after(15):
            result = await rt.call("sleepy", {}, run_id="r", call_id="c", tenant="t")
        workdir = (await rt.envs.get("r")).workdir
        pids = [int(p) for p in (workdir / "pids").read_text().split()]
    assert not result.ok and result.error_kind == "timeout"
    assert "1.5s" in (result.error or "")
    await wait_gone(pids)


async def test_kill_9_from_outside_is_reported_as_killed() -> None:
    script = (
        "import os, time; open('pid.tmp', 'w').write(str(os.getpid())); os.rename('pid.tmp', 'pid'); "
        "time.sleep(60)"
    )
    tool = SubprocessTool("victim", [PY, "-c", script], timeout=30)
    async with runtime_with(tool) as rt:
        workdir = (await rt.envs.get("r")).workdir
        outcome = {}

        async def run() -> None:
            outcome["result"] = await rt.call("victim", {}, run_id="r", call_id="c", tenant="t")

        with anyio.fail_after(15):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                pid = int(await wait_for_file(workdir / "pid"))
                os.kill(pid, signal.SIGKILL)
    result = outcome["result"]
    assert not result.ok and result.error_kind == "killed"
    assert "SIGKILL" in (result.error or "")
    assert not alive(pid)


async def test_memory_limit_is_an_error_not_a_hang() -> None:
    script = "b = bytearray(2 * 1024 ** 3); print('allocated')"
    tool = SubprocessTool("hog", [PY, "-c", script], memory_bytes=256 * 1024 * 1024, timeout=20)
    async with runtime_with(tool) as rt:
        with anyio.fail_after(20):
            result = await rt.call("hog", {}, run_id="r", call_id="c", tenant="t")
    assert not result.ok and result.error_kind == "limit", result
    assert isinstance(result.output, dict)
    assert "MemoryError" in result.output["stderr"] and "allocated" not in result.output["stdout"]
    assert result.duration_s < 10


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_CPU semantics checked on Linux")
async def test_cpu_limit() -> None:
    tool = SubprocessTool("spin", [PY, "-c", "while True: pass"], cpu_seconds=1, timeout=30)
    async with runtime_with(tool) as rt:
        with anyio.fail_after(30):
            result = await rt.call("spin", {}, run_id="r", call_id="c", tenant="t")
    assert not result.ok and result.error_kind == "limit", result
    assert "CPU limit of 1s" in (result.error or "")


async def test_output_is_truncated_and_flagged() -> None:
    script = "import sys; sys.stdout.write('x' * 200000); sys.stderr.write('e' * 10)"
    tool = SubprocessTool("loud", [PY, "-c", script], max_output_bytes=1000)
    async with runtime_with(tool) as rt:
        result = await rt.call("loud", {}, run_id="r", call_id="c", tenant="t")
    assert result.ok and isinstance(result.output, dict)
    assert result.output["truncated"] is True
    assert result.output["stdout"] == "x" * 1000 and result.output["stderr"] == "e" * 10
    assert result.output["exit_code"] == 0  # the writer was drained, not blocked or killed


async def test_missing_program_is_a_readable_error() -> None:
    tool = SubprocessTool("ghost", ["legato-no-such-program-xyz", "{a}"])
    async with runtime_with(tool) as rt:
        result = await rt.call("ghost", {"a": "1"}, run_id="r", call_id="c", tenant="t")
    assert not result.ok and result.error_kind == "exception"
    assert "cannot execute 'legato-no-such-program-xyz'" in (result.error or "")


async def test_escaped_descendant_does_not_hold_the_result_until_timeout() -> None:
    # A descendant that calls setsid() leaves the tool's process group (a real sandbox needs a
    # container for those); it inherits stdout, but the result must still come back promptly.
    script = (
        "import subprocess, sys\n"
        "cmd = [sys.executable, '-c', 'import time; time.sleep(30)']\n"
        "p = subprocess.Popen(cmd, start_new_session=True)\n"
        "open('escaped', 'w').write(str(p.pid))\n"
        "print('done')\n"
    )
    tool = SubprocessTool("escape", [PY, "-c", script], timeout=20)
    async with runtime_with(tool) as rt:
        workdir = (await rt.envs.get("r")).workdir
        try:
            with anyio.fail_after(10):
                result = await rt.call("escape", {}, run_id="r", call_id="c", tenant="t")
        finally:
            os.kill(int(await wait_for_file(workdir / "escaped")), signal.SIGKILL)
    assert result.ok and isinstance(result.output, dict) and result.output["stdout"] == "done\n"
    assert result.duration_s < 5
