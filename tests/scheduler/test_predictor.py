"""Reuse predictor and program history: what they learn and how they predict."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from legato import END, START, Program, llm, tool_node
from legato.scheduler.events import CallHints
from legato.scheduler.legato_run import HORIZONS, Run, projected
from legato.scheduler.predictor import ReusePredictor
from legato.scheduler.program_history import ProgramHistory, continues_km


def test_tool_latency_falls_back_to_hint_then_default() -> None:
    p = ReusePredictor(default_tool_s=1.5)
    assert p.tool_latency_s("bash", "t0") == 1.5
    learned = ReusePredictor()  # no default: every tool's mean latency so far, 0 before any
    assert learned.tool_latency_s("bash", "t0") == 0.0
    learned.tool_finished("edit", "t0", 3.0)
    assert learned.tool_latency_s("bash", "t0") == 3.0
    assert p.tool_latency_s("bash", "t0", hint_s=4.0) == 4.0
    assert p.tool_quantile_s("bash", "t0", 0.9, hint_s=4.0) == 8.0


def test_tool_latency_learns_the_lognormal_median_per_tenant() -> None:
    p = ReusePredictor(min_tenant_samples=3)
    for seconds in (1.0, 4.0, 16.0):  # log-mean: log 4
        p.tool_finished("test", "slow", seconds)
    for seconds in (0.5, 0.5, 0.5):
        p.tool_finished("test", "fast", seconds)
    assert p.tool_latency_s("test", "slow") == pytest.approx(4.0)
    assert p.tool_latency_s("test", "fast") == pytest.approx(0.5)
    # a tenant with no samples of its own gets the tool-wide fit
    overall = math.exp((math.log(1.0) + math.log(4.0) + math.log(16.0) + 3 * math.log(0.5)) / 6)
    assert p.tool_latency_s("test", "new") == pytest.approx(overall)
    assert p.tool_quantile_s("test", "slow", 0.9) > p.tool_latency_s("test", "slow")


def test_accuracy_compares_each_tool_gap_with_the_next_call() -> None:
    p = ReusePredictor()
    for _ in range(3):
        p.tool_finished("bash", "t", 2.0)
    assert p.accuracy() == {"predictor_samples": 0.0}
    at = p.tool_started("r1", "bash", "t", now=10.0)
    assert at == pytest.approx(12.0)
    p.call_arrived("r1", 13.0)  # actual gap 3 s: error 1 s, within 2x
    p.tool_started("r2", "bash", "t", now=20.0)
    p.call_arrived("r2", 30.0)  # actual gap 10 s: error 8 s, not within 2x
    p.call_arrived("r3", 31.0)  # no pending prediction: ignored
    acc = p.accuracy()
    assert acc["predictor_samples"] == 2.0
    assert acc["predictor_median_abs_err_s"] == pytest.approx(4.5)
    assert acc["predictor_within_2x"] == pytest.approx(0.5)


def test_last_step_is_never_reused_and_hint_tool_wins() -> None:
    p = ReusePredictor()
    assert not p.reuses_prefix("agent", "n", CallHints(is_last_step=True))
    assert p.reuses_prefix("agent", "n", CallHints())
    assert p.next_tool("agent", "n", CallHints(next_tool="grep")) == "grep"
    assert p.next_tool("agent", "n", CallHints()) is None
    p.history.record_tool("agent", "n", "bash")
    p.history.record_tool("agent", "n", "bash")
    p.history.record_tool("agent", "n", "edit")
    assert p.next_tool("agent", "n", CallHints()) == "bash"


def _two_prefix_program() -> object:
    prog = Program({"q": "replace", "a": "replace", "b": "replace", "c": "replace"}, name="two")
    prog.prefix("sys", "You are a helper.\n")
    prog.prefix("other", "A different system prompt.\n")
    prog.add_node("first", llm(prefix=["sys"], slots=["q"], output="a"))
    prog.add_node("tool", tool_node("word_count", output="b"))
    prog.add_node("again", llm(prefix=["sys"], slots=["b"], output="c"))
    prog.add_node("switch", llm(prefix=["other"], slots=["c"], output="a"))
    prog.add_edge(START, "first")
    prog.add_edge("first", "tool")
    prog.add_edge("tool", "again")
    prog.add_edge("again", "switch")
    prog.add_edge("switch", END)
    return prog.compile().graph


def test_graph_says_whether_the_next_llm_node_shares_the_prefix() -> None:
    p = ReusePredictor()
    p.run_started("two", _two_prefix_program())
    assert p.reuses_prefix("two", "first", CallHints())  # "again" starts with "sys" too
    assert not p.reuses_prefix("two", "again", CallHints())  # "switch" starts with "other"
    assert not p.reuses_prefix("two", "switch", CallHints())  # nothing follows
    assert p.reuses_prefix("two", "not-a-node", CallHints())  # unknown label: assume reuse


def test_history_residual_survival_growth_and_footprints() -> None:
    h = ProgramHistory()
    assert h.expected_remaining_calls("swe", 0) is None
    assert h.survival("swe", 3, 2) == 1.0
    assert h.mean_output("swe") is None  # nothing seen: the caller decides (no made-up prior)
    for n in (10, 20, 30):
        h.record_run("swe", n)
    assert h.runs("swe") == 3
    assert h.expected_remaining_calls("swe", 0) == pytest.approx(20.0)
    assert h.expected_remaining_calls("swe", 15) == pytest.approx((5 + 15) / 2)
    assert h.expected_remaining_calls("swe", 40) == 1.0
    assert h.survival("swe", 15, 10) == pytest.approx(0.5)  # of {20, 30}: only 30 passes 25
    assert h.survival("swe", 0, 25) == pytest.approx(1 / 3)
    h.record_output("swe", 100)
    h.record_output("swe", 300)
    assert h.mean_output("swe") == 200.0
    assert h.mean_growth("swe") is None  # no sample yet
    assert h.mean_output("other") == 200.0  # a program without samples: every program's mean
    h.record_growth("swe", 1000)
    assert h.mean_growth("swe") == 1000.0
    assert h.footprint_growth("swe", 1, 2) is None
    h.record_footprint("swe", 1, 5000)
    h.record_footprint("swe", 3, 9000)
    h.record_footprint("swe", 3, 11000)
    assert h.footprint_growth("swe", 1, 2) == pytest.approx(5000.0)


def test_history_learns_the_remaining_cost_after_each_step() -> None:
    h = ProgramHistory()
    assert h.expected_remaining_cost("p", 0) is None
    h.record_costs("p", [100.0, 200.0, 400.0])  # calls grow with the context
    h.record_costs("p", [100.0, 300.0])
    assert h.expected_remaining_cost("p", 0) == pytest.approx((700.0 + 400.0) / 2)
    assert h.expected_remaining_cost("p", 1) == pytest.approx((600.0 + 300.0) / 2)
    assert h.expected_remaining_cost("p", 2) == pytest.approx(400.0)
    assert h.expected_remaining_cost("p", 3) is None


def test_a_run_outlasts_a_fresh_one_only_where_the_hazard_decreases() -> None:
    h = ProgramHistory()
    assert not h.outlasts_fresh("chat", 1)  # no history: keep what it has
    for length in (1, 1, 1, 1, 1, 1, 4, 6):  # most ask once, a few go on
        h.record_run("chat", length)
    assert h.outlasts_fresh("chat", 1)  # 4 more expected vs 2 for a new one
    assert not h.outlasts_fresh("chat", 5)  # past every run but one: 1 more
    for length in (8, 9, 10, 10, 11):  # lengths clustered: every call brings the end nearer
        h.record_run("agent", length)
    assert not any(h.outlasts_fresh("agent", done) for done in range(12))


def test_kaplan_meier_continuation_is_the_plain_share_without_censoring() -> None:
    lengths = [1, 1, 1, 1, 1, 2, 2, 2, 5, 9, 9]
    ended = Counter(lengths)
    for done in range(11):
        past = [n for n in lengths if n > done]
        plain = sum(1 for n in past if n > done + 1) / len(past) if past else 0.0
        assert continues_km(ended, Counter(), done) == pytest.approx(plain)
    assert continues_km(Counter(), Counter(), 0) == 1.0  # nothing observed: nothing ends


def test_kaplan_meier_counts_running_runs_as_censored() -> None:
    # 4 runs ended after 1 call; 2 are known to make at least 3 (length >= 3).
    ended, going = Counter({1: 4}), Counter({3: 2})
    assert continues_km(ended, going, 0) == pytest.approx(2 / 6)  # 4 of the 6 at risk ended at 1
    assert continues_km(ended, going, 1) == pytest.approx(1.0)  # nothing is seen to end at 2
    assert continues_km(ended, Counter(), 1) == 0.0  # finished runs alone: none outlived 1
    # A run going at c may still end at c (its c-th call may be its last): 1 ended at 2 of the
    # 3 at risk there.
    assert continues_km(Counter({2: 1, 4: 1}), Counter({2: 1}), 1) == pytest.approx(2 / 3)


def test_a_run_in_a_tool_counts_as_going_on_so_a_mostly_one_call_program_ranks_it_long() -> None:
    # Mooncake's conversations: most ask once. Early on, every finished run made one call and a
    # few runs are in a tool after their first (their second call is coming).
    h = ProgramHistory()
    for _ in range(10):
        h.record_progress("chat", 1, 0)
    for _ in range(8):
        h.record_run("chat", 1)
    h.record_progress("chat", 2, 1)  # started a tool: a second call reads its result
    h.record_progress("chat", 2, 1)
    assert h.outlasts_fresh("chat", 1)
    h.record_run("chat", 2, known=2)  # the two that went on stopped after their second call
    h.record_run("chat", 2, known=2)
    assert not h.outlasts_fresh("chat", 1)


def test_running_runs_make_an_outliving_run_long() -> None:
    h = ProgramHistory()
    for length in (1, 1, 1, 1):  # early on only the short runs have finished
        h.record_run("chat", length)
    assert not h.outlasts_fresh("chat", 2)
    for done in (1, 2, 3, 4, 5, 6):  # two runs are still going after 6 calls
        h.record_progress("chat", done, done - 1)
        h.record_progress("chat", done, done - 1)
    assert h.outlasts_fresh("chat", 2)
    h.record_run("chat", 6)  # one finished: it no longer counts as going
    h.record_run("chat", 6)
    assert not h.outlasts_fresh("chat", 6)


def test_history_learns_how_far_a_run_grows_before_it_can_next_be_paused() -> None:
    h = ProgramHistory()
    assert h.calls_until_pausable("map") == 1.0  # no sample: every call end may be one
    for alone in (False, False, False, True):  # three workers end while others still run
        h.record_call_end("map", alone)
    assert h.calls_until_pausable("map") == pytest.approx(4.0)
    h.record_call_end("chain", True)
    assert h.calls_until_pausable("chain") == 1.0
    h.record_call_end("fan", False)
    assert h.calls_until_pausable("fan") == math.inf
    for done, tokens in ((0, 1000), (1, 3000), (3, 9000), (5, 4000)):
        h.record_footprint("map", done, tokens)
    assert h.footprint_growth("map", 0, 1) == pytest.approx(2000.0)
    assert h.footprint_growth("map", 0, 4) == pytest.approx(8000.0)  # the peak within reach
    assert h.footprint_growth("map", 0, math.inf) == pytest.approx(8000.0)
    assert h.footprint_growth("map", 5, math.inf) is None  # nothing seen after it
    assert h.footprint_growth("map", 0, math.inf, after=3) == pytest.approx(3000.0)  # the decline


def test_runs_are_projected_at_common_future_points_so_staggered_peaks_share_the_room() -> None:
    h = ProgramHistory()
    for done, tokens in ((0, 1000), (1, 2000), (2, 4000), (3, 9000), (4, 3000)):
        h.record_footprint("map", done, tokens)
    young = Run("a", "map", "t0", None, calls_done=0, live={"a#0": 1000})
    older = Run("b", "map", "t0", None, calls_done=2, live={"b#2": 4000})
    a, _ = projected(young, 1000.0, h, ahead=math.inf)
    b, _ = projected(older, 4000.0, h, ahead=math.inf)
    assert HORIZONS[:4] == (0, 1, 2, 4)
    assert a[:4] == [1000.0, 2000.0, 4000.0, 9000.0]  # its peak three to four calls ahead
    assert b[:4] == [4000.0, 9000.0, 4000.0, 4000.0]  # its peak next call, never below now
    assert max(x + y for x, y in zip(a, b, strict=True)) == 13000.0  # not 9,000 + 9,000
    # A run whose calls run one at a time is paused at its next call: nothing past it counts.
    seq, _ = projected(young, 1000.0, h, ahead=1.0)
    assert seq == [1000.0] + [2000.0] * (len(HORIZONS) - 1)
