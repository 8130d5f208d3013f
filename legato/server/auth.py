"""Tenants and API keys: who is calling, and may they start more work.

- Keys are `lg_` + 32 random bytes (urlsafe base64); the store keeps only their sha256 (a
  high-entropy key needs no slow hash), looked up by hash and compared in constant time.
- `current_tenant` is the FastAPI dependency every tenant-scoped endpoint uses: `Authorization:
  Bearer <key>` -> `Tenant`, else 401 with `WWW-Authenticate`. The embedded single-tenant default
  (`default_tenant`) answers requests with no key or an unknown one (clients such as the official
  `openai` client always send one) only from loopback clients, and only when the server runs in
  single-tenant mode (`on`, or `auto` while no tenants exist).
- `Tenant.cache_salt` depends on the tenant id alone: prefix-cache isolation never comes from a
  client-supplied field.
- `QuotaTracker`: concurrent runs and tokens per minute per tenant; `ApiError(429)` with
  `Retry-After` when exhausted.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import ipaddress
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from legato.cache.block_hash import CACHE_SALT_KEY as CACHE_SALT_KEY  # re-exported for the server
from legato.cache.block_hash import tenant_salt
from legato.server.errors import ApiError
from legato.server.store.base import RunStore, TenantRecord

log = logging.getLogger(__name__)

KEY_PREFIX = "lg_"


@dataclass(frozen=True)
class Tenant:
    id: str
    name: str
    weight: float
    max_concurrent_runs: int
    tokens_per_minute: int | None
    admin: bool = False  # may call the control plane (`legato tenants add NAME --admin`)

    @property
    def cache_salt(self) -> str:
        """Prefix-cache salt: a function of the authenticated tenant id only."""
        return tenant_salt(self.id)

    @classmethod
    def from_record(cls, rec: TenantRecord) -> Tenant:
        return cls(rec.id, rec.name, rec.weight, rec.max_concurrent_runs, rec.tokens_per_minute, rec.admin)


def default_tenant(max_concurrent_runs: int) -> Tenant:
    """The keyless localhost caller of single-tenant mode: whoever reaches the server from its own
    host without a key operates it, control plane included."""
    return Tenant("default", "default", 1.0, max_concurrent_runs, None, admin=True)


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class TenantRegistry:
    """Tenants on top of the run store (so `legato tenants add` in another process is seen at
    once by a running server)."""

    def __init__(self, store: RunStore, single_tenant: str, default_max_concurrent_runs: int) -> None:
        self.store = store
        self.single_tenant = single_tenant
        self.default = default_tenant(default_max_concurrent_runs)
        self._key_cache: dict[str, tuple[float, Tenant]] = {}  # key hash -> (expiry, tenant)
        self._keyless: tuple[float, bool] = (0.0, False)  # `auto` mode: (valid until, answer)

    async def add(
        self,
        name: str,
        *,
        weight: float = 1.0,
        max_concurrent_runs: int = 64,
        tokens_per_minute: int | None = None,
        admin: bool = False,
    ) -> tuple[Tenant, str]:
        """Create a tenant; returns it and its API key (shown once, never stored). `admin`: its
        key may also call the control plane (an RL trainer's weight sync)."""
        key = new_api_key()
        record = TenantRecord(
            id="t_" + secrets.token_hex(8),
            name=name,
            key_hash=hash_key(key),
            weight=weight,
            max_concurrent_runs=max_concurrent_runs,
            tokens_per_minute=tokens_per_minute,
            admin=admin,
        )
        await self.store.add_tenant(record)
        self._keyless = (0.0, False)  # keys are required from now on (in this process at once)
        return Tenant.from_record(record), key

    async def list(self) -> list[TenantRecord]:
        return await self.store.list_tenants()

    async def remove(self, name: str) -> bool:
        return await self.store.remove_tenant(name)

    KEY_CACHE_TTL_S = 2.0

    async def by_key(self, key: str) -> Tenant | None:
        """Known keys are remembered for `KEY_CACHE_TTL_S` (a removed tenant's key keeps working
        that long): every proxied call authenticates, and a store round trip per call (SQLite
        runs one query at a time) became the service's bottleneck under load. Unknown keys
        always ask the store, so a new tenant's key works at once."""
        digest = hash_key(key)
        now = time.monotonic()
        cache = self._key_cache
        hit = cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        record = await self.store.tenant_by_key_hash(digest)
        if record is None or not hmac.compare_digest(record.key_hash, digest):
            cache.pop(digest, None)
            return None
        tenant = Tenant.from_record(record)
        if len(cache) > 10_000:
            cache.clear()
        cache[digest] = (now + self.KEY_CACHE_TTL_S, tenant)
        return tenant

    async def keyless_allowed(self) -> bool:
        """`auto` mode asks the store whether any tenant exists at most once per
        `KEY_CACHE_TTL_S` (a tenant added by another process requires keys within that time, as
        a removed key stops working then; one added here, at once): a store round trip on every
        request was a large share of a request's cost under load."""
        if self.single_tenant == "on":
            return True
        if self.single_tenant == "off":
            return False
        now = time.monotonic()
        until, allowed = self._keyless
        if now < until:
            return allowed
        allowed = await self.store.count_tenants() == 0
        self._keyless = (now + self.KEY_CACHE_TTL_S, allowed)
        return allowed

    async def authenticate(self, authorization: str | None, client_host: str | None) -> Tenant:
        """The tenant of a request. In single-tenant mode a loopback client is the default tenant
        whatever key it sends (or none): the official `openai` client always sends one
        (`api_key="EMPTY"` by convention); a key that belongs to a tenant still means that tenant."""
        keyless = is_loopback(client_host) and await self.keyless_allowed()
        if authorization:
            scheme, _, key = authorization.partition(" ")
            if scheme.lower() != "bearer" or not key.strip():
                if keyless:
                    return self.default
                raise ApiError(401, "malformed Authorization header: send `Authorization: Bearer <api key>`")
            tenant = await self.by_key(key.strip())
            if tenant is not None:
                return tenant
            if keyless:
                return self.default
            raise ApiError(401, "invalid API key (create one with `legato tenants add NAME`)")
        if keyless:
            return self.default
        raise ApiError(
            401,
            "missing API key: send `Authorization: Bearer <api key>` "
            "(keys come from `legato tenants add NAME`; keyless access is only for localhost in "
            "single-tenant mode)",
        )


BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="A key from `legato tenants add NAME`. Not needed from localhost while no tenant exists.",
)


async def current_tenant(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)] = None
) -> Tenant:
    """FastAPI dependency: the authenticated tenant of this request (401 otherwise). `BEARER`
    only declares the scheme in the OpenAPI document (Swagger's Authorize button); the header is
    read here, so a malformed one gets this module's message."""
    tenants: TenantRegistry = request.app.state.legato.tenants
    client = request.client.host if request.client is not None else None
    tenant = await tenants.authenticate(request.headers.get("authorization"), client)
    request.state.tenant = tenant
    return tenant


class QuotaTracker:
    """Per-tenant concurrent runs (counted by the run manager) and tokens in a sliding minute."""

    WINDOW_S = 60.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.active: collections.Counter[str] = collections.Counter()
        self._tokens: dict[str, collections.deque[tuple[float, int]]] = {}
        self._totals: collections.Counter[str] = collections.Counter()
        self.rejected: collections.Counter[str] = collections.Counter()  # 429s answered per tenant
        # Set on a store shared by instances: token windows are exchanged through it every
        # second, so a tenant's tokens per minute count every instance (at most ~1 s late).
        self.shared = False
        self._unpushed: collections.Counter[str] = collections.Counter()

    def record_tokens(self, tenant_id: str, n: int) -> None:
        if n <= 0:
            return
        self._tokens.setdefault(tenant_id, collections.deque()).append((self.clock(), n))
        self._totals[tenant_id] += n
        if self.shared:
            self._unpushed[tenant_id] += n

    # -- several instances (see `legato.server.store.redis_usage`) -------------------------------
    def take_unpushed(self) -> tuple[dict[str, int], list[str]]:
        """Tokens recorded here since the last exchange (now counted as pushed), and every
        tenant whose shared window this instance wants to see."""
        pushed = dict(self._unpushed)
        self._unpushed.clear()
        return pushed, sorted(set(self._tokens) | set(pushed))

    def push_failed(self, pushed: dict[str, int]) -> None:
        """`take_unpushed`'s tokens did not reach the store: push them next time."""
        self._unpushed.update(pushed)

    def adopt(self, tenant_id: str, buckets: list[tuple[float, int]]) -> None:
        """Replace the tenant's window with every instance's tokens (`(age_s, n)` buckets, this
        instance's pushed tokens included) plus what was recorded here since the push."""
        now = self.clock()
        window = collections.deque((now - age, n) for age, n in sorted(buckets, reverse=True))
        if self._unpushed[tenant_id]:
            window.append((now, self._unpushed[tenant_id]))
        self._tokens[tenant_id] = window
        self._totals[tenant_id] = sum(n for _, n in window)

    def tokens_last_minute(self, tenant_id: str) -> int:
        window = self._tokens.get(tenant_id)
        if not window:
            return 0
        cutoff = self.clock() - self.WINDOW_S
        while window and window[0][0] <= cutoff:
            self._totals[tenant_id] -= window.popleft()[1]
        return self._totals[tenant_id]

    def check_tokens(self, tenant: Tenant) -> None:
        """429 when the tenant used its tokens-per-minute budget."""
        limit = tenant.tokens_per_minute
        if limit is None:
            return
        if self.shared:  # from now on the exchange reads this tenant's tokens on every instance
            self._tokens.setdefault(tenant.id, collections.deque())
        used = self.tokens_last_minute(tenant.id)
        if used < limit:
            return
        window = self._tokens.get(tenant.id, collections.deque())
        # wait until enough of the oldest tokens leave the window to get under the limit
        excess, retry = used - limit + 1, self.WINDOW_S
        for at, n in window:
            excess -= n
            if excess <= 0:
                retry = at + self.WINDOW_S - self.clock()
                break
        raise ApiError(
            429,
            f"tenant {tenant.name!r} used {used} tokens in the last minute (limit {limit} tokens per "
            "minute); retry later",
            retry_after_s=max(1.0, retry),
        )

    def check_run_start(self, tenant: Tenant, running: int | None = None) -> None:
        """429 when the tenant already has `max_concurrent_runs` runs in flight (`running`: as
        counted across instances), or no tokens left."""
        running = self.active[tenant.id] if running is None else running
        if running >= tenant.max_concurrent_runs:
            raise ApiError(
                429,
                f"tenant {tenant.name!r} has {running} runs in flight (limit {tenant.max_concurrent_runs} "
                "concurrent runs); wait for one to finish or cancel one",
                retry_after_s=1.0,
            )
        self.check_tokens(tenant)
