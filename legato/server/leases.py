"""The lease loop of a server sharing its store (Redis) with other instances.

Every `lease_s / 3` seconds (so a lease is renewed twice before it could expire): renew the
leases of this instance's live runs (a run whose lease was lost, e.g. after a pause longer than
the lease, is stopped here: another instance drives it now), then take over the unfinished runs
nobody holds a lease on (their owner finished, drained or died) by resuming them here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

import anyio

from legato.server.store.base import RunStore

log = logging.getLogger(__name__)


class RunOwner(Protocol):
    """What the loop needs of the `RunManager` (a protocol: no import cycle)."""

    @property
    def store(self) -> RunStore: ...

    @property
    def live(self) -> Mapping[str, Any]: ...

    @property
    def executor(self) -> Any: ...

    async def resume_unfinished(self) -> int: ...


async def keep_leases(runs: RunOwner, scope: anyio.CancelScope, lease_s: float) -> None:
    with scope:
        while True:
            await anyio.sleep(lease_s / 3)
            await beat(runs)


async def beat(runs: RunOwner) -> None:
    try:
        for run_id in await runs.store.renew_runs(list(runs.live)):
            log.warning("lost the lease of run %s: stopping it here", run_id, extra={"run_id": run_id})
            runs.executor.cancel(run_id)
        taken = await runs.resume_unfinished()
        if taken:
            log.info("took over %d run(s) whose owner stopped or died", taken)
    except Exception:  # e.g. the store is briefly unreachable: try again next beat
        log.exception("renewing run leases failed")
