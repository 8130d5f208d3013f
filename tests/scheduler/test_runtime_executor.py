"""The executor runs programs through `PolicyScheduler` on the real torch engine."""

from __future__ import annotations

from typing import TypedDict

import pytest

from legato.engine_adapter.torch import load_engine
from legato.programs.builder import Program, fan_out, llm
from legato.programs.calls import RunStatus
from legato.programs.executor import Executor
from legato.scheduler.baselines import POLICIES
from legato.scheduler.runtime import PolicyScheduler
from tests.scheduler.test_runtime import TINY


class S(TypedDict):
    topics: list[str]
    drafts: list[str]
    summary: str


@pytest.mark.parametrize("policy", ["continuum", "thunderagent", "autellix"])
async def test_programs_run_through_the_policy_scheduler(policy: str) -> None:
    p = Program(S, name=f"rt_mapreduce_{policy.replace('-', '_')}")
    p.prefix(
        f"rt_sys_{policy.replace('-', '_')}",
        "You are one of several workers sharing this system prompt. " * 4,
    )
    p.add_node(
        "map",
        fan_out(
            "topics",
            llm(prefix=[f"rt_sys_{policy.replace('-', '_')}"], slots=["item"], max_tokens=6),
            output="drafts",
        ),
    )
    p.add_node(
        "reduce",
        llm(prefix=[f"rt_sys_{policy.replace('-', '_')}"], slots=["drafts"], max_tokens=6, output="summary"),
    )
    p.add_edge("map", "reduce")
    program = p.compile()
    async with load_engine(None, "cpu", model_config=TINY, num_blocks=128, seed=3) as engine:
        async with PolicyScheduler([engine], POLICIES[policy]()) as sched, Executor(sched) as ex:
            handles = [ex.submit(program, {"topics": [f"topic {i}", f"other {i}"]}) for i in range(3)]
            results = [await h.wait(timeout_s=60) for h in handles]
        assert [r.status for r in results] == [RunStatus.SUCCEEDED] * 3, [r.error for r in results]
        assert sched.stats["calls"] == sched.stats["dispatches"] == 9
        assert sched.stats["bad_decisions"] == sched.stats["policy_errors"] == 0
        assert sched.runs == {}
