"""Workload facts the simulator tells the scheduler (`legato.sim.workload`)."""

from __future__ import annotations

from legato.sim.workload import CallSpec, Segment, reused_context_tokens

SYSTEM, SCHEMA, QUESTION, SQL_SYSTEM = Segment(1, 300), Segment(2, 3000), Segment(3, 50), Segment(4, 400)


def test_a_call_reuses_the_context_it_follows_as_far_as_its_segments_repeat_it() -> None:
    link = CallSpec("link", (SYSTEM, SCHEMA, QUESTION), 100, output_seg_id=10)
    answer = CallSpec(
        "answer", (SYSTEM, SCHEMA, QUESTION, Segment(10, 100), Segment(11, 70)), 80, 12, deps=(0,)
    )
    # opens with another system prompt: longer than the context, and reuses none of it
    sql = CallSpec("sql", (SQL_SYSTEM, SCHEMA, QUESTION, Segment(10, 100)), 80, 13, deps=(0,))
    # a branch that keeps the head and not the output (a sub-agent's own instructions)
    branch = CallSpec("branch", (SYSTEM, SCHEMA, Segment(14, 20)), 80, 15, deps=(0,))
    calls = (link, answer, sql, branch)
    assert reused_context_tokens(calls, 0) == 0
    assert reused_context_tokens(calls, 1) == 3450
    assert reused_context_tokens(calls, 2) == 0
    assert reused_context_tokens(calls, 3) == 3300
