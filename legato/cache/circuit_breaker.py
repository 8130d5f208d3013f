"""A circuit breaker for a remote tier: stop hammering a backend that is down or slow.

Closed: calls go through; `failure_threshold` consecutive failures open it. Open: every call is
refused at once (a cache miss, costing nothing) for `cooldown_s`. Half-open: after the cooldown
one trial call goes through; success closes the breaker, failure opens it for another cooldown.
Thread-safe (the engine's load path and the tier writer share one), clock-injected for tests.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class CircuitBreaker:
    failure_threshold: int = 3
    cooldown_s: float = 1.0
    clock: Callable[[], float] = time.monotonic
    state: BreakerState = BreakerState.CLOSED
    opens: int = 0  # how many times it opened (a counter for metrics and tests)
    refused: int = 0  # calls refused while open
    _failures: int = 0
    _opened_at: float = 0.0
    _trial_in_flight: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {self.failure_threshold}")
        if not self.cooldown_s > 0:
            raise ValueError(f"cooldown_s must be > 0, got {self.cooldown_s}")

    def allow(self) -> bool:
        """May a call go through now? In half-open state only one trial call at a time."""
        with self._lock:
            if self.state is BreakerState.CLOSED:
                return True
            if self.state is BreakerState.OPEN and self.clock() - self._opened_at >= self.cooldown_s:
                self.state = BreakerState.HALF_OPEN
                self._trial_in_flight = False
            if self.state is BreakerState.HALF_OPEN and not self._trial_in_flight:
                self._trial_in_flight = True
                return True
            self.refused += 1
            return False

    def success(self) -> None:
        with self._lock:
            self._failures = 0
            self._trial_in_flight = False
            self.state = BreakerState.CLOSED

    def failure(self) -> None:
        with self._lock:
            self._trial_in_flight = False
            self._failures += 1
            if self.state is BreakerState.HALF_OPEN or self._failures >= self.failure_threshold:
                if self.state is not BreakerState.OPEN:
                    self.opens += 1
                self.state = BreakerState.OPEN
                self._opened_at = self.clock()
