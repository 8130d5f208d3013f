"""The replicas panel: per replica, calls running and waiting, KV per tier, hit rate, busy share.

Running / waiting are the scheduler's own counts (every policy keeps them, passthrough included);
the queue held by a policy (calls not dispatched yet) is counted separately. KV per tier is the
`tier_stats` snapshot `/metrics` exports too. The busy fraction is the share of the last
`BusyWindow.WINDOW_S` seconds in which the replica had a call inside it (the scheduler's
`BusyClock`), sampled at each request of the page. Speculative decoding's acceptance (accepted /
drafted tokens) appears when the engine drafts.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from legato.server.state import ServerState
from legato.server.tier_stats import replica_tiers


class BusyWindow:
    """Busy seconds per replica sampled over time, so the page shows a recent fraction."""

    WINDOW_S = 10.0  # long enough to smooth the page's 1 s polls, short enough to follow load

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.samples: collections.deque[tuple[float, list[float]]] = collections.deque()

    def fraction(self, busy_now: list[float]) -> list[float | None]:
        now = self.clock()
        samples = self.samples
        while len(samples) > 1 and now - samples[1][0] >= self.WINDOW_S:
            samples.popleft()
        out: list[float | None] = [None] * len(busy_now)
        if samples:
            t0, b0 = samples[0]
            dt = now - t0
            if dt > 0 and len(b0) == len(busy_now):
                out = [max(0.0, min(1.0, (b - a) / dt)) for a, b in zip(b0, busy_now, strict=True)]
        samples.append((now, list(busy_now)))
        return out


def _ratio(num: Any, den: Any) -> float | None:
    if isinstance(num, int) and isinstance(den, int) and den > 0:
        return num / den
    return None


def replicas_panel(
    state: ServerState, window: BusyWindow, stats_list: list[object | None]
) -> list[dict[str, Any]]:
    """`stats_list`: each replica's latest `EngineStats` (`live_state` refreshes them)."""
    sched = state.inner_scheduler
    engines = state.replicas
    busy = getattr(sched, "busy", None)
    busy_now = [busy.busy_now(i) for i in range(len(engines))] if busy is not None else []
    fractions = window.fraction(busy_now) if busy_now else [None] * len(engines)
    running = getattr(sched, "running", None)
    waiting = getattr(sched, "waiting", None)
    pending = getattr(sched, "pending", None)
    held = sum(1 for p in pending.values() if p.replica is None) if isinstance(pending, dict) else 0
    out: list[dict[str, Any]] = []
    for i, engine in enumerate(engines):
        stats = stats_list[i] if i < len(stats_list) else None
        tiers = replica_tiers(engine, stats)
        drafted = getattr(stats, "spec_draft_tokens", 0)
        out.append(
            {
                "replica": i,
                "model": getattr(engine, "model_name", "?"),
                "running": running[i] if isinstance(running, list) else getattr(stats, "running", None),
                "waiting": waiting[i] if isinstance(waiting, list) else getattr(stats, "waiting", None),
                "held_by_policy": held if i == 0 else 0,  # not placed yet: shown once, on the first
                "total_blocks": getattr(stats, "total_blocks", None),
                "tiers": [asdict(t) for t in tiers.tiers],
                "load_choices": tiers.load_choices,
                "recompute_choices": tiers.recompute_choices,
                "prefix_hit_rate": _ratio(
                    getattr(stats, "prefix_hit_tokens", None), getattr(stats, "prompt_tokens", None)
                ),
                "busy_fraction": fractions[i] if i < len(fractions) else None,
                "spec_acceptance": (
                    _ratio(getattr(stats, "spec_accepted_tokens", None), drafted) if drafted else None
                ),
            }
        )
    return out


__all__ = ["BusyWindow", "replicas_panel"]
