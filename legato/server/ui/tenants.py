"""The tenants panel: weight, the service each tenant got over the last minute, and fairness.

Delivered service is the tokens (prompt + output) each tenant was served in the quota tracker's
sliding window (`QuotaTracker.WINDOW_S`, the same minute the tokens-per-minute quota counts).
A tenant's entitled share is its weight over the weights of the tenants served in the window;
Jain's index of the weight-normalised service (tokens / weight) is 1 when every active tenant
got exactly its weighted share and falls towards 1/n as one tenant takes everything. Quota use
is runs in flight over `max_concurrent_runs` and tokens in the window over `tokens_per_minute`;
429s are the refusals answered to that tenant since the server started. `fair_counter` is the
weighted fair-share policy's counter of the tenant's service per weight (`FairShare`: the
tenant with the smallest goes next; shared by instances on one Redis), None under a policy
without one.
"""

from __future__ import annotations

from typing import Any

from legato.server.auth import Tenant
from legato.server.state import ServerState, fair_share_of
from legato.server.ui.viewer import Viewer


def jain_index(values: list[float]) -> float | None:
    """(sum x)^2 / (n * sum x^2): 1 = all equal; None without values."""
    if not values:
        return None
    square = sum(x * x for x in values)
    return (sum(values) ** 2) / (len(values) * square) if square > 0 else 1.0


def tenants_panel(state: ServerState, viewer: Viewer, tenants: list[Tenant]) -> dict[str, Any]:
    quotas = state.quotas
    known = list(tenants)
    default = state.tenants.default
    if all(t.id != default.id for t in known) and (
        quotas.tokens_last_minute(default.id) or quotas.active[default.id] or not known
    ):
        known.append(default)
    used = {t.id: quotas.tokens_last_minute(t.id) for t in known}
    active = [t for t in known if used[t.id] > 0]
    total = sum(used[t.id] for t in active)
    weights = sum(t.weight for t in active)
    fair = fair_share_of(state.inner_scheduler)
    rows = []
    for t in known:
        if not viewer.sees(t.id):
            continue
        rows.append(
            {
                "id": t.id,
                "name": t.name,
                "weight": t.weight,
                "tokens_window": used[t.id],
                "share": used[t.id] / total if total else 0.0,
                "entitled_share": t.weight / weights if used[t.id] and weights else None,
                "runs": quotas.active[t.id],
                "max_concurrent_runs": t.max_concurrent_runs,
                "tokens_per_minute": t.tokens_per_minute,
                "rejected_429": quotas.rejected[t.id],
                "fair_counter": None if fair is None else fair.counter(t.id),
            }
        )
    jain = jain_index([used[t.id] / t.weight for t in active if t.weight > 0])
    return {"window_s": quotas.WINDOW_S, "jain_index": jain, "active_tenants": len(active), "rows": rows}


__all__ = ["jain_index", "tenants_panel"]
