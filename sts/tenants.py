"""Resolving the `/{tenant}` path segment to a tenant (docs/design.md §6).

The segment is either the tenant's GUID or one of its verified domain names, compared
case-insensitively. Anything else, including Entra's multi-tenant aliases `common`,
`organizations` and `consumers` (not supported on these endpoints yet), is AADSTS90002.

Lookups are cached per process for `tenant_cache_ttl_s` (default 30 s), misses too so that
random names cannot make every request a database round trip; the cache is bounded and
simply cleared when full. A domain moved to another tenant or a changed
`block_legacy_auth` is therefore seen within one TTL on every replica.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from aiohttp import web
from cachetools import TTLCache

from sts.correlation import bind_tenant
from sts.errors import TenantNotFound
from sts.queries import Database

MAX_CACHE_ENTRIES = 10_000

# RFC 1035 host name: labels of letters, digits and hyphens, at most 253 characters.
_DOMAIN = re.compile(
    r"^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$"
)


@dataclass(frozen=True, slots=True)
class Tenant:
    """A resolved tenant. `id` is the canonical lowercase GUID string."""

    id: str
    name: str
    block_legacy_auth: bool

    @property
    def uuid(self) -> uuid.UUID:
        return uuid.UUID(self.id)


def parse_segment(segment: str) -> uuid.UUID | str | None:
    """A GUID, a lowercased domain name, or None when the segment can be neither."""
    if len(segment) == 36 and segment.count("-") == 4:
        try:
            return uuid.UUID(segment)
        except ValueError:
            return None
    domain = segment.lower()
    return domain if _DOMAIN.match(domain) else None


class TenantDirectory:
    """Resolves tenants through the database, with a short per-process cache."""

    def __init__(self, db: Database, *, ttl_s: float) -> None:
        self._db = db
        # Entries live `ttl_s`; when full, the least recently used tenant goes first.
        self._cache: TTLCache[str, Tenant | None] | None = (
            TTLCache(MAX_CACHE_ENTRIES, ttl=ttl_s) if ttl_s > 0 else None
        )

    async def resolve(self, segment: str) -> Tenant:
        """The tenant named by `segment`; raises TenantNotFound (AADSTS90002)."""
        key = segment.lower()
        if self._cache is not None and key in self._cache:
            tenant = self._cache[key]
        else:
            tenant = await self._lookup(segment)
            if self._cache is not None:
                self._cache[key] = tenant
        if tenant is None:
            raise TenantNotFound(segment)
        return tenant

    async def _lookup(self, segment: str) -> Tenant | None:
        parsed = parse_segment(segment)
        if parsed is None:
            return None
        if isinstance(parsed, uuid.UUID):
            row = await self._db.tenant_by_id(parsed)
        else:
            row = await self._db.tenant_by_domain(parsed)
        if row is None:
            return None
        return Tenant(str(row.id), row.name, row.block_legacy_auth)


TENANTS = web.AppKey("tenants", TenantDirectory)


async def tenant_of(request: web.Request) -> Tenant:
    """Resolve the request's `{tenant}` segment and bind `tenant_id` for its logs.

    Raises TenantNotFound (AADSTS90002).
    """
    tenant = await request.app[TENANTS].resolve(request.match_info["tenant"])
    bind_tenant(tenant.id)
    return tenant
