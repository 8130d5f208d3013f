"""`thunderagent` pins what upstream ThunderAgent does (github.com/ThunderAgent-org/ThunderAgent):
`ThunderAgent/scheduler/router.py` `_scheduled_check`, `_pause_until_safe`, `_greedy_resume`,
`_select_backend_for_new_program`; `ThunderAgent/backend/state.py` `remaining_capacity` (the
full KV minus `BUFFER_PER_PROGRAM` = 100 tokens per program) and `remaining_capacity_with_decay`;
`ThunderAgent/config.py` defaults (`use_acting_token_decay=False`, `scheduler_interval=5.0`).
Shared tokens stay 0 (upstream never calls `BackendState.update_shared_tokens`)."""

from __future__ import annotations

from legato.scheduler.baselines.thunderagent import BUFFER_PER_PROGRAM, SCHEDULER_INTERVAL_S, ThunderAgent
from legato.scheduler.events import RunFinished, Tick
from legato.scheduler.policy import Dispatch, Pause, Resume
from tests.scheduler.baseline_helpers import FakeView, arrive, finish, on

CAP_BLOCKS = 1000  # 16,000 tokens of 16-token blocks


def _turn(
    ta: ThunderAgent, view: FakeView, run: str, j: int, prompt: int, output: int, replica: int = 0
) -> None:
    assert on(ta, arrive(run, j, prompt), 0.0, view) == [Dispatch(f"{run}#{j}", replica)]
    assert on(ta, finish(run, j, prompt, output), 0.0, view) == []


def test_defaults_are_upstream() -> None:
    ta = ThunderAgent()
    assert ta.decay is False  # config.py: use_acting_token_decay=False
    assert ta.traits.tick_s == SCHEDULER_INTERVAL_S == 5.0  # config.py: scheduler_interval
    assert BUFFER_PER_PROGRAM == 100  # backend/state.py


def test_full_capacity_pauses_smallest_acting_first_without_decay() -> None:
    """Over capacity, the smallest ACTING program is paused first; with the decay off, a tool
    step that has run for 100 s still counts at full weight."""
    view = FakeView([CAP_BLOCKS])
    ta = ThunderAgent()
    _turn(ta, view, "a", 0, 3000, 3000)  # 6000 tokens
    _turn(ta, view, "b", 0, 2000, 2000)  # 4000 tokens
    _turn(ta, view, "c", 0, 5000, 1000)  # 6000 tokens: 16000 + 3 x 100 > 16000
    assert on(ta, Tick(), 100.0, view) == [Pause("b", evict=False)]  # a router-level pause
    assert on(ta, Tick(), 105.0, view) == []  # within capacity now; b does not fit back


def test_capacity_is_the_full_kv_minus_the_per_program_buffer() -> None:
    view = FakeView([CAP_BLOCKS])
    ta = ThunderAgent()
    _turn(ta, view, "a", 0, 8000, 0)
    _turn(ta, view, "b", 0, 7800, 0)  # 15800 + 2 x 100 = 16000: exactly full, nothing paused
    assert on(ta, Tick(), 5.0, view) == []
    _turn(ta, view, "a", 1, 8001, 0)  # one token more: over
    assert on(ta, Tick(), 10.0, view) == [Pause("b", evict=False)]


def test_reasoning_program_is_marked_then_paused_when_its_response_arrives() -> None:
    view = FakeView([CAP_BLOCKS])
    ta = ThunderAgent()
    assert on(ta, arrive("a", 0, 17000), 0.0, view) == [Pause("a", evict=False)]  # never fits
    ta2 = ThunderAgent()
    _turn(ta2, view, "a", 0, 10000, 0)
    assert on(ta2, arrive("a", 1, 17000), 1.0, view) == [Dispatch("a#1", 0)]  # grew while reasoning
    assert on(ta2, Tick(), 5.0, view) == []  # REASONING: marked, not interrupted
    assert on(ta2, finish("a", 1, 17000, 10), 6.0, view) == [Pause("a", evict=False)]


def test_new_programs_wait_behind_a_non_empty_queue() -> None:
    view = FakeView([CAP_BLOCKS])
    ta = ThunderAgent()
    _turn(ta, view, "a", 0, 9000, 3000)
    _turn(ta, view, "b", 0, 3000, 1000)
    assert on(ta, Tick(), 5.0, view) == [Pause("b", evict=False)]
    # room for a tiny program, but b waits: the newcomer queues behind it (fairness)
    assert on(ta, arrive("n", 0, 10), 6.0, view) == [Pause("n", evict=False)]


def test_resume_prefers_reasoning_over_smaller_new_and_acting_programs() -> None:
    view = FakeView([CAP_BLOCKS])
    ta = ThunderAgent()
    _turn(ta, view, "big", 0, 12700, 0)
    _turn(ta, view, "act", 0, 2000, 0)
    _turn(ta, view, "rsn", 0, 1000, 500)  # 16200 + 300: over by 500
    assert on(ta, Tick(), 5.0, view) == [Pause("rsn", evict=False)]  # the smallest ACTING one
    assert on(ta, arrive("big", 1, 14000), 6.0, view) == [Dispatch("big#1", 0)]
    assert on(ta, Tick(), 10.0, view) == [Pause("act", evict=False)]
    on(ta, finish("big", 1, 14000, 0), 11.0, view)  # room left: 16000 - 14100 = 1900
    assert on(ta, arrive("rsn", 1, 1700), 12.0, view) == []  # held: REASONING while paused
    assert on(ta, arrive("new", 0, 500), 12.0, view) == [Pause("new", evict=False)]
    # rsn (1800 with its buffer) is chosen first although new and act are smaller or older
    assert on(ta, Tick(), 15.0, view) == [Resume("rsn"), Dispatch("rsn#1", 0)]


def test_resume_places_best_fit_decreasing_across_backends() -> None:
    view = FakeView([CAP_BLOCKS, CAP_BLOCKS])
    ta = ThunderAgent()
    _turn(ta, view, "k", 0, 5900, 0)  # backend 0: room 10000
    _turn(ta, view, "big", 0, 15900, 0, replica=1)  # backend 1: full
    assert on(ta, arrive("y", 0, 9950), 0.0, view) == [Pause("y", evict=False)]  # no room
    assert on(ta, arrive("x", 0, 5000), 0.0, view) == [Pause("x", evict=False)]  # queue not empty
    on(ta, RunFinished("big", "succeeded"), 1.0, view)
    # the largest (y) goes to the roomiest backend (1); then x to the roomiest left (0)
    assert on(ta, Tick(), 5.0, view) == [Resume("y"), Dispatch("y#0", 1), Resume("x"), Dispatch("x#0", 0)]


def test_decay_when_turned_on_discounts_acting_tokens_for_resume_only() -> None:
    view = FakeView([CAP_BLOCKS])
    for decay in (False, True):
        ta = ThunderAgent(decay=decay)
        _turn(ta, view, "a", 0, 12000, 0)  # ACTING since t=0
        assert on(ta, arrive("w", 0, 5000), 0.0, view) == [Pause("w", evict=False)]
        out = on(ta, Tick(), 30.0, view)  # 2^-30: a's tokens are worth ~0 to the resume check
        if decay:  # resumed on the decayed count; the pause check that follows does not decay
            assert out == [Resume("w"), Dispatch("w#0", 0), Pause("a", evict=False)]
        else:
            assert out == []
