"""`Tally`: what an instance records between exchanges composes into one op per tenant that,
applied to the shared value, gives what applying every change in order would."""

from __future__ import annotations

import random

import pytest

from legato.scheduler.tally import NO_FLOOR, Tally, apply, then


def test_ops_compose_as_applying_them_in_order() -> None:
    rng = random.Random(0)
    for _ in range(200):
        start = rng.uniform(-50, 50)
        ops = [
            (rng.uniform(-10, 10), NO_FLOOR) if rng.random() < 0.6 else (0.0, rng.uniform(-50, 50))
            for _ in range(rng.randint(0, 8))
        ]
        value, composed = start, (0.0, NO_FLOOR)
        for op in ops:
            value = apply(op, value)
            composed = then(composed, op)
        assert apply(composed, start) == pytest.approx(value)


def test_an_unshared_tally_records_nothing_to_push() -> None:
    t = Tally()
    t.add("a", 5.0)
    t.lift("b", 3.0)
    assert (t["a"], t.get("b"), t.get("c")) == (5.0, 3.0, 0.0)
    assert t.take() == {}


def test_adopting_the_shared_value_keeps_what_changed_here_since_the_push() -> None:
    t = Tally()
    t.shared = True
    t.add("a", 5.0)
    pushed = t.take()
    assert pushed == {"a": (5.0, NO_FLOOR)}
    t.add("a", 1.0)  # while the push was in flight
    t.adopt({"a": 105.0, "b": 7.0})  # the store: 100 from another instance + our 5
    assert (t["a"], t["b"]) == (106.0, 7.0)


def test_a_failed_push_goes_out_next_time_before_what_followed() -> None:
    t = Tally()
    t.shared = True
    t.add("a", 5.0)
    pushed = t.take()
    t.lift("a", 20.0)  # after the failed push: 5 + 0 lifted to 20
    t.push_failed(pushed)
    op = t.take()["a"]
    assert apply(op, 0.0) == 20.0 and apply(op, 30.0) == 35.0
