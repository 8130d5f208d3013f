"""Who is looking at `/ui`: an operator who sees everything, or one tenant who sees only theirs.

The page's data endpoints authenticate like every other tenant-scoped endpoint (`auth.py`,
`Authorization: Bearer <key>`), with one addition: the admin key (`ServerConfig.admin_key`,
`LEGATO_ADMIN_KEY` for `legato serve`) sees every tenant. So does the keyless localhost mode
(single-tenant mode, a loopback client): whoever can reach the server from its own host without a
key operates it. A tenant key sees that tenant's programs, runs and decisions only; the shared
replicas panel carries no program ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from legato.server.admin import is_admin_key
from legato.server.auth import BEARER
from legato.server.state import ServerState


@dataclass(frozen=True, slots=True)
class Viewer:
    tenant_id: str | None  # None: sees every tenant
    label: str

    @property
    def admin(self) -> bool:
        return self.tenant_id is None

    def sees(self, tenant_id: str | None) -> bool:
        return self.tenant_id is None or tenant_id == self.tenant_id


async def current_viewer(request: Request, _: Annotated[object, Depends(BEARER)] = None) -> Viewer:
    """FastAPI dependency: the viewer of this request (401 without a valid key, as elsewhere)."""
    state: ServerState = request.app.state.legato
    authorization = request.headers.get("authorization")
    if is_admin_key(state, authorization):
        return Viewer(None, "admin")
    client = request.client.host if request.client is not None else None
    tenant = await state.tenants.authenticate(authorization, client)
    request.state.tenant = tenant
    if tenant is state.tenants.default:
        return Viewer(None, "localhost (keyless)")
    return Viewer(tenant.id, tenant.name)


ViewerDep = Annotated[Viewer, Depends(current_viewer)]

__all__ = ["Viewer", "ViewerDep", "current_viewer", "is_admin_key"]
