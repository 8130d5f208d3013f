"""Every replica's `await engine.stats()`, each bounded by a timeout, for `/metrics` and `/ui`.

A scrape or a page refresh must not fail or hang because one engine is slow: a replica whose
stats do not come within `STATS_TIMEOUT_S` (or that has none) is None in the answer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import anyio

log = logging.getLogger(__name__)

STATS_TIMEOUT_S = 5.0


async def fetch_engine_stats(
    engines: Sequence[Any], timeout_s: float = STATS_TIMEOUT_S
) -> list[object | None]:
    out: list[object | None] = []
    for engine in engines:
        stats_fn = getattr(engine, "stats", None)
        value: object | None = None
        if stats_fn is not None:
            try:
                with anyio.fail_after(timeout_s):
                    value = await stats_fn()
            except Exception:
                log.warning("engine stats unavailable", exc_info=True)
        out.append(value)
    return out


__all__ = ["STATS_TIMEOUT_S", "fetch_engine_stats"]
