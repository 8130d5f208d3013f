"""The breaker opens after consecutive failures, refuses while open, half-opens after the
cooldown with one trial, and closes again on success."""

from __future__ import annotations

import pytest

from legato.cache.circuit_breaker import BreakerState, CircuitBreaker


def test_open_half_open_close_cycle() -> None:
    now = [0.0]
    b = CircuitBreaker(failure_threshold=3, cooldown_s=1.0, clock=lambda: now[0])
    for _ in range(2):
        assert b.allow()
        b.failure()
    assert b.state is BreakerState.CLOSED
    b.failure()
    assert b.state is BreakerState.OPEN and b.opens == 1
    assert not b.allow() and b.refused == 1
    now[0] = 1.5
    assert b.allow() and b.state is BreakerState.HALF_OPEN
    assert not b.allow()  # one trial at a time
    b.failure()  # the trial failed: open again for a full cooldown
    assert b.state is BreakerState.OPEN and b.opens == 2
    now[0] = 2.0
    assert not b.allow()
    now[0] = 2.6
    assert b.allow()
    b.success()
    assert b.state is BreakerState.CLOSED and b.allow()


def test_success_resets_the_failure_count() -> None:
    b = CircuitBreaker(failure_threshold=2)
    b.failure()
    b.success()
    b.failure()
    assert b.state is BreakerState.CLOSED


def test_bad_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker(failure_threshold=0)
    with pytest.raises(ValueError, match="cooldown_s"):
        CircuitBreaker(cooldown_s=0)
