"""Baseline policies: published schedulers reproduced as pure policy objects, plus bounds.

`POLICIES` maps the names `legato bench --policies` accepts to zero-argument factories. Each
class docstring says what it reproduces and what it simplifies.
"""

from __future__ import annotations

from collections.abc import Callable

from legato.bench.baselines.autellix import Autellix
from legato.bench.baselines.belady import Belady
from legato.bench.baselines.continuum import Continuum
from legato.bench.baselines.fcfs_lru import FcfsLru
from legato.bench.baselines.infinite_kv import InfiniteKV
from legato.bench.baselines.lpm import Lpm
from legato.bench.baselines.thunderagent import ThunderAgent
from legato.scheduler.policy import Policy

POLICIES: dict[str, Callable[[], Policy]] = {
    "fcfs-lru": FcfsLru,
    "lpm": Lpm,
    "continuum": Continuum,
    "thunderagent": ThunderAgent,
    "autellix": Autellix,
    "infinite-kv": InfiniteKV,
    "belady": Belady,
}

__all__ = ["POLICIES", "Autellix", "Belady", "Continuum", "FcfsLru", "InfiniteKV", "Lpm", "ThunderAgent"]
