"""Who may operate the server: the control plane's callers.

The RL control plane (`routes_rl_control`: weight updates, pause / resume, sleep, cache resets,
SGLang's abort-all) acts on every replica, so on every tenant's requests at once. It answers
only an admin: the operator's key (`ServerConfig.admin_key`, `LEGATO_ADMIN_KEY` for `legato
serve`), a tenant created with `legato tenants add NAME --admin` (an RL trainer, whose one key
both generates and syncs weights), or the keyless localhost caller of single-tenant mode (who
operates the server anyway). Any other tenant key is a 403; no key is a 401, as elsewhere.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from legato.server.auth import BEARER, Tenant, hash_key
from legato.server.errors import ApiError
from legato.server.state import ServerState

ADMIN_REFUSAL = (
    "this is a control-plane endpoint: it needs an admin key (a tenant created with "
    "`legato tenants add NAME --admin`, or the server's LEGATO_ADMIN_KEY)"
)


def is_admin_key(state: ServerState, authorization: str | None) -> bool:
    """Is this the operator's key (`ServerConfig.admin_key`)? Compared in constant time."""
    admin = state.config.admin_key
    if not admin or not authorization:
        return False
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(hash_key(key.strip()), hash_key(admin))


def require_admin(tenant: Tenant) -> None:
    """403 unless the tenant may operate the server."""
    if not tenant.admin:
        raise ApiError(403, ADMIN_REFUSAL)


async def operator_or_tenant(request: Request, _: Annotated[object, Depends(BEARER)] = None) -> Tenant | None:
    """FastAPI dependency of the control plane's reads: None for the operator's key, else the
    authenticated tenant (401 without a valid key)."""
    state: ServerState = request.app.state.legato
    authorization = request.headers.get("authorization")
    if is_admin_key(state, authorization):
        return None
    client = request.client.host if request.client is not None else None
    tenant = await state.tenants.authenticate(authorization, client)
    request.state.tenant = tenant
    return tenant


async def admin_caller(caller: Annotated[Tenant | None, Depends(operator_or_tenant)]) -> Tenant | None:
    """FastAPI dependency of the control plane's writes: None for the operator's key, the tenant
    for an admin tenant; 401 without a valid key, 403 for a tenant that is not an admin."""
    if caller is not None:
        require_admin(caller)
    return caller


AdminDep = Annotated[Tenant | None, Depends(admin_caller)]
ReaderDep = Annotated[Tenant | None, Depends(operator_or_tenant)]

__all__ = [
    "ADMIN_REFUSAL",
    "AdminDep",
    "ReaderDep",
    "admin_caller",
    "is_admin_key",
    "operator_or_tenant",
    "require_admin",
]
