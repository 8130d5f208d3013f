"""The rules of speculative tools (`RunSpeculation` alone, with a recording tool runner), and
option checks: bad values are a ValueError or a usage error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from typer.testing import CliRunner

from legato.cli import app
from legato.programs.speculation import (
    ProgramSpecConfig,
    RunSpeculation,
    TenantToolBudget,
    ToolCallPredictor,
    parse_program_spec,
    tool_key,
)
from legato.tools.base import ToolResult

REACT = str(Path(__file__).resolve().parents[2] / "examples" / "react_coder.py")


class Runner:
    """Answers every call with its own arguments after `delay_s`; records what ran."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def call(
        self, name: str, args: dict[str, Any], *, run_id: str, call_id: str, tenant: str
    ) -> ToolResult:
        self.calls.append((name, args))
        await anyio.sleep(self.delay_s)
        return ToolResult(ok=True, output={"name": name, **args}, duration_s=self.delay_s)


def spec(runner: Runner, config: ProgramSpecConfig | None = None, **kw: Any) -> RunSpeculation:
    cfg = config or ProgramSpecConfig()
    return RunSpeculation(
        cfg, TenantToolBudget(cfg), runner, lambda name: name != "write", run_id="r", tenant="t", **kw
    )


async def test_only_an_exact_match_from_the_same_epoch_is_used() -> None:
    async with spec(Runner()) as s:
        assert s.start_tool("read", {"path": "a", "n": 1})
        assert await s.take("read", {"n": 1, "path": "a"}) == ToolResult(
            ok=True, output={"name": "read", "path": "a", "n": 1}
        )  # key order does not matter
        assert s.start_tool("read", {"path": "a"})
        assert await s.take("read", {"path": "b"}) is None  # other args: discarded
        assert s.start_tool("read", {"path": "a"})
        s.impure()  # a write started: the speculative read is stale
        assert not s.start_tool("read", {"path": "a"})  # nor may one start while it runs
        s.impure()
        assert await s.take("read", {"path": "a"}) is None
        assert not s.start_tool("write", {"path": "a"})  # never an impure tool
        assert not s.start_tool("read", {"x": object()})  # arguments that are not JSON
    assert (s.counters.tools_used, s.counters.tools_discarded) == (1, 2)


async def test_the_tenant_budget_bounds_concurrency_and_seconds() -> None:
    cfg = ProgramSpecConfig(max_concurrent_tools=1, cpu_seconds=0.05, window_s=3600)
    runner = Runner(delay_s=0.1)
    async with spec(runner, cfg) as s:
        assert s.start_tool("read", {"path": "a"})
        assert not s.start_tool("read", {"path": "b"})  # one in flight at most
        assert (await s.take("read", {"path": "a"})) is not None
        assert not s.start_tool("read", {"path": "c"})  # 0.1 s spent of a 0.05 s budget
    assert len(runner.calls) == 1


async def test_the_predictor_starts_what_followed_the_last_call() -> None:
    predictor = ToolCallPredictor()
    runner = Runner()
    async with spec(runner, predictor=predictor) as first:
        await first.take("list", {})
        await first.take("read", {"path": "a"})
    runner.calls.clear()
    async with spec(runner, predictor=predictor) as second:
        assert second.predict_and_start()  # what the last run began with
        assert await second.take("list", {}) is not None
        assert second.predict_and_start()  # what followed `list`
        assert await second.take("read", {"path": "a"}) is not None
        assert not second.predict_and_start()  # nothing ever followed `read a`
    assert runner.calls == [("list", {}), ("read", {"path": "a"})]
    assert second.counters.tools_used == 2
    assert predictor.predict(tool_key("list", {})) == ("read", '{"path":"a"}')


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_concurrent_tools": -1},
        {"max_concurrent_tools": 1000},
        {"cpu_seconds": 0},
        {"window_s": float("nan")},
    ],
)
def test_bad_speculation_options_are_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ProgramSpecConfig(**kwargs)


def test_program_spec_values() -> None:
    assert parse_program_spec("off") is None
    assert parse_program_spec("on") == ProgramSpecConfig()
    assert parse_program_spec("prefill+early") == ProgramSpecConfig(predicted_tools=False)
    assert parse_program_spec("predicted") == ProgramSpecConfig(prefill=False, early_tools=False)
    for bad in ("maybe", "", "prefill+prefill", "prefill+on", "ON"):
        with pytest.raises(ValueError, match="'on', 'off' or"):
            parse_program_spec(bad)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-w", f"program:{REACT}", "--engine", "torch", "--program-spec", "maybe"], "'on', 'off' or"),
        (["-w", f"program:{REACT}", "--engine", "torch", "--program-spec", "on,on"], "distinct"),
        (["-w", f"program:{REACT}", "--program-spec", "on"], "--engine torch"),
        (["-w", "swe", "--engine", "torch", "--program-spec", "on"], "needs a program workload"),
        (["-w", "program:/no/such/file.py", "--engine", "torch"], "does not exist"),
        (["-w", f"program:{REACT}", "--engine", "torch", "-p", "rounds=0"], "rounds must be >= 1"),
        (["-w", f"program:{REACT}", "--engine", "torch", "-p", "speed=2"], "unknown --param speed"),
        (["-w", f"program:{REACT}", "--engine", "torch", "-n", "0"], "programs must be >= 1"),
    ],
)
def test_bad_bench_options_are_usage_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["bench", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_bad_run_option_is_a_usage_error() -> None:
    result = CliRunner().invoke(app, ["run", REACT, "--program-spec", "sometimes"])
    assert result.exit_code == 2 and "'on', 'off' or" in result.output


def test_bad_serve_option_is_a_usage_error() -> None:
    result = CliRunner().invoke(app, ["serve", "--program-spec", "always"])
    assert result.exit_code == 2 and "--program-spec" in result.output
