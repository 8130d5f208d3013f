"""Baseline policies: published schedulers reproduced as pure policy objects, plus bounds.

`POLICIES` maps the names `legato bench --policies` accepts to zero-argument factories. Each
class docstring says what it reproduces and what it simplifies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from legato.scheduler.baselines.autellix import Autellix
from legato.scheduler.baselines.continuum import Continuum
from legato.scheduler.baselines.fcfs_lru import FcfsLru
from legato.scheduler.baselines.infinite_kv import InfiniteKV
from legato.scheduler.baselines.lpm import Lpm
from legato.scheduler.baselines.oracle_evict import OracleEvict
from legato.scheduler.baselines.thunderagent import ThunderAgent
from legato.scheduler.legato_policy import Legato
from legato.scheduler.policy import Policy

POLICIES: dict[str, Callable[[], Policy]] = {
    "fcfs-lru": FcfsLru,
    "lpm": Lpm,
    "continuum": Continuum,
    "thunderagent": ThunderAgent,
    "autellix": Autellix,
    "infinite-kv": InfiniteKV,
    "oracle-evict": OracleEvict,
    "legato": Legato,
}

# Policies that take the tenants' fair-share weights, by name: weights -> policy.
WEIGHTED: dict[str, Callable[[Mapping[str, float]], Policy]] = {
    "legato": lambda weights: Legato(weights=weights),
}


def build_policy(name: str, tenant_weights: Mapping[str, float] | None = None) -> Policy:
    """A fresh policy by registry name (KeyError if unknown); fair-share policies get the
    tenants' weights — in a bench, the workload's `tenant_weights`."""
    if tenant_weights and name in WEIGHTED:
        return WEIGHTED[name](tenant_weights)
    return POLICIES[name]()


__all__ = [
    "POLICIES",
    "WEIGHTED",
    "Autellix",
    "Continuum",
    "FcfsLru",
    "InfiniteKV",
    "Legato",
    "Lpm",
    "OracleEvict",
    "ThunderAgent",
    "build_policy",
]
