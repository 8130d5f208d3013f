"""Per-run tool environments: prepared ahead of need, reused, released on finish and on cancel."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import anyio
import pytest

from legato.tools import (
    EnvironmentManager,
    EnvironmentReleasedError,
    EnvironmentSetupError,
    SubprocessTool,
    ToolEnvironment,
    ToolRegistry,
    ToolRuntime,
)

from .procs import PY, alive, own_children, wait_for_file, wait_gone

LONG_SCRIPT = (
    "import os, subprocess, sys, time\n"
    "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    "open('pids.tmp', 'w').write('%d %d' % (os.getpid(), g.pid))\n"
    "os.rename('pids.tmp', 'pids')\n"
    "time.sleep(60)\n"
)


def long_tool_runtime(envs: EnvironmentManager | None = None) -> ToolRuntime:
    registry = ToolRegistry()
    registry.register(SubprocessTool("long", [PY, "-c", LONG_SCRIPT], timeout=60))
    registry.register(SubprocessTool("touch", [PY, "-c", "import sys; open(sys.argv[1], 'w')", "{name}"]))
    registry.register(SubprocessTool("ls", [PY, "-c", "import os; print(' '.join(sorted(os.listdir())))"]))
    return ToolRuntime(registry, envs=envs)


async def test_prepared_ahead_of_need(tmp_path: Path) -> None:
    hook_started = anyio.Event()
    allow_finish = anyio.Event()

    async def setup(env: ToolEnvironment) -> None:
        hook_started.set()
        (env.workdir / "skeleton.txt").write_text("repo")
        await allow_finish.wait()

    async with EnvironmentManager(tmp_path / "envs", setup_hooks=[setup]) as envs:
        with anyio.fail_after(1):
            await envs.prepare("run-1")  # returns at once, setup continues in the background
            await hook_started.wait()
        got: list[ToolEnvironment] = []

        async def getter() -> None:
            got.append(await envs.get("run-1"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(getter)
            await anyio.sleep(0.05)
            assert not got  # get waits for preparation
            allow_finish.set()
        assert (got[0].workdir / "skeleton.txt").read_text() == "repo"
        assert await envs.get("run-1") is got[0]  # reused across steps


async def test_setup_hook_can_run_a_subprocess(tmp_path: Path) -> None:
    async def setup(env: ToolEnvironment) -> None:
        outcome = await env.run_command([PY, "-c", "open('setup.done', 'w').write('ok')"], timeout_s=20)
        assert outcome.returncode == 0

    async with EnvironmentManager(tmp_path, setup_hooks=[setup]) as envs:
        await envs.prepare("r")
        env = await envs.get("r")
        assert (env.workdir / "setup.done").read_text() == "ok"


async def test_setup_failure_is_a_clear_error(tmp_path: Path) -> None:
    async def broken(env: ToolEnvironment) -> None:
        raise FileNotFoundError("skeleton repo missing")

    envs = EnvironmentManager(tmp_path, setup_hooks=[broken])
    async with long_tool_runtime(envs) as rt:
        with pytest.raises(EnvironmentSetupError, match="skeleton repo missing"):
            await envs.get("r")
        result = await rt.call("ls", {}, run_id="r2", call_id="c", tenant="t")
        assert not result.ok and result.error_kind == "exception"
        assert "skeleton repo missing" in (result.error or "")
    await envs.aclose()


async def test_reused_across_steps_and_released_on_finish() -> None:
    async with long_tool_runtime() as rt:
        await rt.prepare_run("r")
        await rt.call("touch", {"name": "step1.txt"}, run_id="r", call_id="1", tenant="t")
        second = await rt.call("ls", {}, run_id="r", call_id="2", tenant="t")
        assert isinstance(second.output, dict) and second.output["stdout"].split() == ["step1.txt"]
        workdir = (await rt.envs.get("r")).workdir
        await rt.release_run("r")
        assert not workdir.exists()
        await rt.release_run("r")  # idempotent
        assert "r" not in rt.envs


async def test_cancel_mid_tool_kills_group_then_release_removes_dir() -> None:
    children_before = {p.pid for p in own_children()}
    async with long_tool_runtime() as rt:
        await rt.prepare_run("r")
        workdir = (await rt.envs.get("r")).workdir
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(partial(rt.call, "long", {}, run_id="r", call_id="c", tenant="t"))
                pids = [int(p) for p in (await wait_for_file(workdir / "pids")).split()]
                assert all(alive(p) for p in pids)
                tg.cancel_scope.cancel()
        # Cancellation killed and reaped the tool's process group before it propagated.
        await wait_gone(pids)
        await rt.release_run("r")
        assert not workdir.exists()
    assert {p.pid for p in own_children()} <= children_before


async def test_release_while_tool_runs_stops_it() -> None:
    async with long_tool_runtime() as rt:
        workdir = (await rt.envs.get("r")).workdir
        results = []

        async def run() -> None:
            results.append(await rt.call("long", {}, run_id="r", call_id="c", tenant="t"))

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                pids = [int(p) for p in (await wait_for_file(workdir / "pids")).split()]
                await rt.release_run("r")
        assert results[0].error_kind == "cancelled"
        await wait_gone(pids)
        assert not workdir.exists()


async def test_release_during_setup_wakes_waiters(tmp_path: Path) -> None:
    async def forever(env: ToolEnvironment) -> None:
        await anyio.sleep(60)

    async with EnvironmentManager(tmp_path, setup_hooks=[forever]) as envs:
        await envs.prepare("r")
        errors: list[BaseException] = []

        async def getter() -> None:
            try:
                await envs.get("r")
            except EnvironmentReleasedError as exc:
                errors.append(exc)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(getter)
                await anyio.sleep(0.05)
                await envs.release("r")
        assert len(errors) == 1
        assert [p async for p in anyio.Path(tmp_path).iterdir()] == []


async def test_aclose_leaves_no_dirs_or_processes() -> None:
    children_before = {p.pid for p in own_children()}
    rt = long_tool_runtime()
    root = rt.envs.root
    pids: list[int] = []
    async with rt:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for i in range(3):
                    run_id = f"run-{i}"
                    await rt.prepare_run(run_id)
                    workdir = (await rt.envs.get(run_id)).workdir
                    tg.start_soon(partial(rt.call, "long", {}, run_id=run_id, call_id="c", tenant="t"))
                    pids += [int(p) for p in (await wait_for_file(workdir / "pids")).split()]
                assert len(list(root.iterdir())) == 3
                await rt.aclose()  # stops every tool through its run's environment
    assert not root.exists()
    await wait_gone(pids)
    assert {p.pid for p in own_children()} <= children_before
    with pytest.raises(RuntimeError, match="closed"):
        await rt.envs.prepare("late")


async def test_lazy_preparation_without_context_manager(tmp_path: Path) -> None:
    calls: list[str] = []

    async def setup(env: ToolEnvironment) -> None:
        calls.append(env.run_id)

    envs = EnvironmentManager(tmp_path, setup_hooks=[setup])
    try:
        await envs.prepare("r")
        assert calls == []  # no task group: nothing runs in the background
        env = await envs.get("r")
        assert calls == ["r"] and env.workdir.is_dir()
    finally:
        await envs.aclose()
    root = anyio.Path(tmp_path)
    assert await root.exists() and [p async for p in root.iterdir()] == []  # a given root is kept, emptied
