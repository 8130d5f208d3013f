"""The `CallScheduler` a `--policy` name stands for, over one or several replicas.

`passthrough` hands calls straight to one engine (it batches on its own); any policy of the
registry (`legato.scheduler.baselines.POLICIES`, `legato` by default) runs in a
`PolicyScheduler` that routes calls between the replicas (program and RL-group affinity, work
stealing), pins prefixes through tool calls and shares the replicas fairly.
"""

from __future__ import annotations

from collections.abc import Sequence

from legato.engine_adapter.base import Engine
from legato.scheduler.base import CallScheduler

DEFAULT_POLICY = "legato"
PASSTHROUGH = "passthrough"


def make_scheduler(
    engines: Sequence[Engine], policy: str | None, tenant_salt: str | None = None
) -> CallScheduler:
    """`policy` None means passthrough (the library default; the commands default to `legato`).
    ValueError, saying what to use instead, for an unknown name, passthrough over several
    replicas, or a policy real time cannot run (a clairvoyant bound)."""
    from legato.scheduler.baselines import POLICIES
    from legato.scheduler.passthrough import PassthroughScheduler
    from legato.scheduler.runtime import PolicyScheduler, UnsupportedPolicyError

    name = policy or PASSTHROUGH
    if name == PASSTHROUGH:
        if len(engines) != 1:
            raise ValueError(
                f"--policy passthrough drives one engine, not {len(engines)}: "
                f"use a routing policy such as --policy {DEFAULT_POLICY} for replicas"
            )
        return PassthroughScheduler(engines[0], tenant_salt=tenant_salt)
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; valid: {PASSTHROUGH}, {', '.join(sorted(POLICIES))}")
    try:
        return PolicyScheduler(list(engines), POLICIES[name](), tenant_salt=tenant_salt)
    except UnsupportedPolicyError as exc:
        raise ValueError(f"--policy {name}: {exc}") from None
