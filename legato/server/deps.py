"""FastAPI dependencies shared by the routers: the server state and the authenticated tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from legato.server.auth import Tenant, current_tenant
from legato.server.errors import ApiError
from legato.server.state import ServerState


async def server_state(request: Request) -> ServerState:
    """`async` although it never waits: FastAPI runs a plain `def` dependency in its thread pool,
    a thread hop (two event-loop turns) on every request."""
    state: ServerState = request.app.state.legato
    return state


TenantDep = Annotated[Tenant, Depends(current_tenant)]
StateDep = Annotated[ServerState, Depends(server_state)]


def not_found(what: str, ident: str, hint: str) -> ApiError:
    """Unknown ids and other tenants' ids look the same: 404."""
    return ApiError(404, f"no {what} {ident!r} ({hint})")
