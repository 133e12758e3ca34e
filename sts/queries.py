"""Every SQL statement of the STS, behind one small class (STYLE.md section 1).

`Database` wraps the asyncpg pool. Each method is one unit of work bounded by
`db_timeout_s` (pool acquire included: STYLE.md section 6, every outbound await has a
timeout) and scoped by tenant wherever a tenant-owned row is read or written (DESIGN.md
security rules: tenant isolation holds in every query). Connection failures and timeouts
become `DatabaseUnavailable` (503 temporarily_unavailable); any other database error is
a bug and propagates to the 500 handler.

Rows come back as frozen dataclasses; no `asyncpg.Record` leaves this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
from aiohttp import web

from sts.errors import DatabaseUnavailable

_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
)


@dataclass(frozen=True, slots=True)
class TenantRow:
    id: uuid.UUID
    name: str
    block_legacy_auth: bool


@dataclass(frozen=True, slots=True)
class AdminRow:
    id: uuid.UUID
    tenant_id: uuid.UUID
    username: str
    display_name: str
    password_hash: str
    roles: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AppRow:
    client_id: uuid.UUID
    name: str
    is_public: bool


@dataclass(frozen=True, slots=True)
class DevicePoll:
    """A device code's state as one poll saw it, before this poll was recorded."""

    scope: str
    is_expired: bool
    is_denied: bool
    approved_admin: uuid.UUID | None
    seconds_since_last_poll: float | None


@dataclass(frozen=True, slots=True)
class PendingDeviceCode:
    """A code waiting for a person on the device login page."""

    device_code_hash: str
    tenant_id: uuid.UUID
    tenant_name: str
    client_id: str
    app_name: str | None


_TENANT_BY_ID = "SELECT id, name, block_legacy_auth FROM tenants WHERE id = $1"

_TENANT_BY_DOMAIN = """
SELECT t.id, t.name, t.block_legacy_auth
FROM domains d JOIN tenants t ON t.id = d.tenant_id
WHERE d.name = lower($1) AND d.is_verified"""

_ADMIN_BY_USERNAME = """
SELECT id, tenant_id, username, display_name, password_hash, roles
FROM admins WHERE tenant_id = $1 AND username = lower($2)"""

_ADMIN_BY_ID = """
SELECT id, tenant_id, username, display_name, password_hash, roles
FROM admins WHERE tenant_id = $1 AND id = $2"""

_APP_BY_CLIENT_ID = (
    "SELECT client_id, name, is_public FROM apps WHERE tenant_id = $1 AND client_id = $2"
)

# Codes expired for more than a day are purged when a tenant asks for a new one, so the
# table stays small without a background job; a poll of such a code is invalid_grant.
_PURGE_DEVICE_CODES = """
DELETE FROM device_codes WHERE tenant_id = $1 AND expires_at < now() - interval '1 day'"""

_INSERT_DEVICE_CODE = """
INSERT INTO device_codes (device_code_hash, user_code, tenant_id, client_id, scope, expires_at)
VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))
ON CONFLICT DO NOTHING"""

_LOCK_DEVICE_CODE = """
SELECT scope, expires_at <= now() AS is_expired, is_denied, approved_admin,
       extract(epoch FROM now() - last_polled_at)::float8 AS since_last_poll
FROM device_codes
WHERE device_code_hash = $1 AND tenant_id = $2 AND client_id = $3
FOR UPDATE"""

_TOUCH_DEVICE_CODE = "UPDATE device_codes SET last_polled_at = now() WHERE device_code_hash = $1"

_DELETE_DEVICE_CODE = "DELETE FROM device_codes WHERE device_code_hash = $1"

_PENDING_BY_USER_CODE = """
SELECT d.device_code_hash, d.tenant_id, t.name AS tenant_name, d.client_id,
       a.name AS app_name
FROM device_codes d
JOIN tenants t ON t.id = d.tenant_id
LEFT JOIN apps a ON a.tenant_id = d.tenant_id AND a.client_id::text = d.client_id
WHERE d.user_code = $1 AND d.expires_at > now()
  AND d.approved_admin IS NULL AND NOT d.is_denied"""

_DECIDE_DEVICE_CODE = """
UPDATE device_codes SET approved_admin = $3, is_denied = $4
WHERE device_code_hash = $1 AND tenant_id = $2 AND expires_at > now()
  AND approved_admin IS NULL AND NOT is_denied"""


def _admin(row: asyncpg.Record) -> AdminRow:
    return AdminRow(
        id=row["id"],
        tenant_id=row["tenant_id"],
        username=row["username"],
        display_name=row["display_name"],
        password_hash=row["password_hash"],
        roles=tuple(row["roles"]),
    )


class Database:
    """The STS's queries over one asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool, *, timeout_s: float) -> None:
        self._pool = pool
        self._timeout_s = timeout_s

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; the whole block is bounded by the timeout."""
        try:
            async with asyncio.timeout(self._timeout_s), self._pool.acquire() as conn:
                yield conn
        except _UNAVAILABLE as exc:
            raise DatabaseUnavailable() from exc

    # -- tenants, admins, apps -----------------------------------------------------------

    async def tenant_by_id(self, tenant_id: uuid.UUID) -> TenantRow | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(_TENANT_BY_ID, tenant_id)
        return None if row is None else TenantRow(row["id"], row["name"], row["block_legacy_auth"])

    async def tenant_by_domain(self, domain: str) -> TenantRow | None:
        """The tenant owning `domain` as a verified domain (case-insensitive)."""
        async with self._connection() as conn:
            row = await conn.fetchrow(_TENANT_BY_DOMAIN, domain)
        return None if row is None else TenantRow(row["id"], row["name"], row["block_legacy_auth"])

    async def admin_by_username(self, tenant_id: uuid.UUID, username: str) -> AdminRow | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(_ADMIN_BY_USERNAME, tenant_id, username)
        return None if row is None else _admin(row)

    async def admin_by_id(self, tenant_id: uuid.UUID, admin_id: uuid.UUID) -> AdminRow | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(_ADMIN_BY_ID, tenant_id, admin_id)
        return None if row is None else _admin(row)

    async def app_by_client_id(self, tenant_id: uuid.UUID, client_id: uuid.UUID) -> AppRow | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(_APP_BY_CLIENT_ID, tenant_id, client_id)
        return None if row is None else AppRow(row["client_id"], row["name"], row["is_public"])

    # -- device codes (RFC 8628) ---------------------------------------------------------

    async def insert_device_code(
        self,
        *,
        device_code_hash: str,
        user_code: str,
        tenant_id: uuid.UUID,
        client_id: str,
        scope: str,
        lifetime: dt.timedelta,
    ) -> bool:
        """Store a new code; False when the user code is taken (the caller draws again)."""
        async with self._connection() as conn, conn.transaction():
            await conn.execute(_PURGE_DEVICE_CODES, tenant_id)
            status = await conn.execute(
                _INSERT_DEVICE_CODE,
                device_code_hash,
                user_code,
                tenant_id,
                client_id,
                scope,
                lifetime.total_seconds(),
            )
        return bool(status == "INSERT 0 1")

    async def poll_device_code(
        self, *, device_code_hash: str, tenant_id: uuid.UUID, client_id: str
    ) -> DevicePoll | None:
        """Record a poll and return the state it found; None for an unknown code.

        A code in a final state (approved, denied or expired) is deleted in the same
        transaction, so it is reported once: a device code is single-use.
        """
        async with self._connection() as conn, conn.transaction():
            row = await conn.fetchrow(_LOCK_DEVICE_CODE, device_code_hash, tenant_id, client_id)
            if row is None:
                return None
            poll = DevicePoll(
                scope=row["scope"],
                is_expired=row["is_expired"],
                is_denied=row["is_denied"],
                approved_admin=row["approved_admin"],
                seconds_since_last_poll=row["since_last_poll"],
            )
            is_final = poll.is_expired or poll.is_denied or poll.approved_admin is not None
            await conn.execute(
                _DELETE_DEVICE_CODE if is_final else _TOUCH_DEVICE_CODE, device_code_hash
            )
        return poll

    async def pending_device_code(self, user_code: str) -> PendingDeviceCode | None:
        """The unexpired, undecided code a person typed, with its tenant and app names."""
        async with self._connection() as conn:
            row = await conn.fetchrow(_PENDING_BY_USER_CODE, user_code)
        if row is None:
            return None
        return PendingDeviceCode(
            device_code_hash=row["device_code_hash"],
            tenant_id=row["tenant_id"],
            tenant_name=row["tenant_name"],
            client_id=row["client_id"],
            app_name=row["app_name"],
        )

    async def decide_device_code(
        self,
        *,
        device_code_hash: str,
        tenant_id: uuid.UUID,
        admin_id: uuid.UUID | None,
        is_denied: bool,
    ) -> bool:
        """Approve (by `admin_id`) or deny a pending code; False if no longer pending."""
        async with self._connection() as conn:
            status = await conn.execute(
                _DECIDE_DEVICE_CODE, device_code_hash, tenant_id, admin_id, is_denied
            )
        return bool(status == "UPDATE 1")


DATABASE = web.AppKey("database", Database)
