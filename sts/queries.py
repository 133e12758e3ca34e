"""Every SQL statement of the STS, behind one small class (docs/contributing.md §1).

`Database` wraps the asyncpg pool. Each method is one unit of work bounded by
`db_timeout_s` (pool acquire included: docs/contributing.md §6, every outbound await has a
timeout) and scoped by tenant wherever a tenant-owned row is read or written (docs/design.md
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
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

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
FROM admins WHERE tenant_id = $1 AND username = $2"""

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
        """The admin stored under this canonical name (common.usernames), if any."""
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

    # -- sign-in through the agents (sts.passwords; rows and SQL at the end) ------------

    async def sign_in_user(self, tenant_id: uuid.UUID, username: str) -> SignInUserRow | None:
        """A synced user of this tenant (by canonical name, common.usernames) and their
        smart lockout state, in one round trip."""
        async with self._connection() as conn:
            row = await conn.fetchrow(_SIGN_IN_USER, tenant_id, username)
        if row is None:
            return None
        lockout = None if row["failures"] is None else _lockout(row)
        return SignInUserRow(
            id=row["id"],
            username=row["username"],
            display_name=row["display_name"],
            immutable_id=row["immutable_id"],
            lockout=lockout,
        )

    async def active_agents(self, tenant_id: uuid.UUID) -> list[AgentKeyRow]:
        """The tenant's agents whose certificate is still valid (newest first, at most 40)."""
        async with self._connection() as conn:
            rows = await conn.fetch(_ACTIVE_AGENTS, tenant_id)
        return [AgentKeyRow(r["id"], r["kid"], bytes(r["spki"]), r["cert_not_after"]) for r in rows]

    async def update_lockout(
        self,
        tenant_id: uuid.UUID,
        username: str,
        mutate: Callable[[LockoutRow], LockoutRow],
    ) -> LockoutRow:
        """Read-modify-write one lockout row under a row lock (replicas count together).

        One upsert creates the zero row or locks the existing one and returns it, so two
        first failures at once (or a failure racing a success's delete) serialise on the
        row lock instead of losing a count. A row that comes back to zero is deleted: the
        table holds only accounts with something to remember. `username` is the lockout
        key of an account that exists (sts.lockout: never a typed name).
        """
        async with self._connection() as conn, conn.transaction():
            row = await conn.fetchrow(_LOCK_LOCKOUT, tenant_id, username)
            old = _lockout(row)
            new = mutate(old)
            if new == old and new != LockoutRow():
                return new  # nothing to write (an attempt told to wait, a repeat)
            if new == LockoutRow():
                await conn.execute(_DELETE_LOCKOUT, tenant_id, username)
                return new
            await conn.execute(
                _UPDATE_LOCKOUT,
                tenant_id,
                username,
                new.failures,
                new.lockouts,
                new.locked_until,
                new.last_failure_at,
                list(new.recent_failures),
                new.in_flight,
                new.in_flight_until,
            )
        return new

    async def read_lockout(self, tenant_id: uuid.UUID, username: str) -> LockoutRow:
        """One lockout row as it is now, without a lock or a write (the zero row when
        there is none): what an attempt waiting for a place polls."""
        async with self._connection() as conn:
            row = await conn.fetchrow(_READ_LOCKOUT, tenant_id, username)
        return LockoutRow() if row is None else _lockout(row)

    async def insert_sign_ins(self, records: Sequence[SignInRecord]) -> None:
        """Append sign-in log rows with one COPY (sts.signin_log batches them)."""
        async with self._connection() as conn:
            await conn.copy_records_to_table(
                "sign_ins", records=[tuple(r) for r in records], columns=SIGN_IN_COLUMNS
            )

    # -- authorization codes and refresh tokens (sts.codes; rows and SQL at the end) -----

    async def insert_authorization_code(self, code: NewAuthorizationCode) -> None:
        """Store a code (its hash); purge this tenant's codes expired for over a day."""
        async with self._connection() as conn, conn.transaction():
            await conn.execute(_PURGE_AUTHORIZATION_CODES, code.tenant_id)
            await conn.execute(
                _INSERT_AUTHORIZATION_CODE,
                code.code_hash,
                code.tenant_id,
                code.client_id,
                code.redirect_uri,
                code.code_challenge,
                code.nonce,
                code.scope,
                code.user.id,
                code.user.username,
                code.user.display_name,
                code.user.immutable_id,
                code.auth_time,
                code.lifetime_s,
            )

    async def consume_authorization_code(
        self, code_hash: str, tenant_id: uuid.UUID
    ) -> AuthorizationCodeRow | None:
        """Mark an unused code used and return it; None when unknown or already used.

        One atomic `UPDATE ... WHERE used_at IS NULL RETURNING`: of two concurrent
        redemptions exactly one gets the row (RFC 6749 section 4.1.2, single use).
        """
        async with self._connection() as conn:
            row = await conn.fetchrow(_CONSUME_AUTHORIZATION_CODE, code_hash, tenant_id)
        if row is None:
            return None
        return AuthorizationCodeRow(
            client_id=row["client_id"],
            redirect_uri=row["redirect_uri"],
            code_challenge=row["code_challenge"],
            nonce=row["nonce"],
            scope=row["scope"],
            user=_granted_user(row),
            auth_time=row["auth_time"],
            is_expired=row["is_expired"],
        )

    async def replay_authorization_code(self, code_hash: str, tenant_id: uuid.UUID) -> int | None:
        """Record a second redemption of a used code and revoke its refresh tokens.

        Returns how many token families were revoked, or None when the code is unknown
        (never issued, purged, or another tenant's). The code row is locked first, the
        same lock `start_refresh_family` takes, so a family being created from the code
        at this moment is either refused or committed and then revoked here.
        """
        async with self._connection() as conn, conn.transaction():
            found = await conn.fetchval(_MARK_AUTHORIZATION_CODE_REPLAYED, code_hash, tenant_id)
            if found is None:
                return None
            status = await conn.execute(_REVOKE_FAMILIES_OF_CODE, code_hash, tenant_id)
        return int(status.split()[-1])

    async def start_refresh_family(self, family: NewRefreshFamily) -> bool:
        """Create a token family and its first token; False if its code was replayed."""
        async with self._connection() as conn, conn.transaction():
            if family.code_hash is not None:
                is_replayed = await conn.fetchval(
                    _LOCK_AUTHORIZATION_CODE, family.code_hash, family.tenant_id
                )
                if is_replayed is None or is_replayed:
                    return False
            await conn.execute(_PURGE_REFRESH_FAMILIES, family.tenant_id)
            await conn.execute(
                _INSERT_REFRESH_FAMILY,
                family.family_id,
                family.tenant_id,
                family.client_id,
                family.scope,
                family.user.id,
                family.user.username,
                family.user.display_name,
                family.user.immutable_id,
                family.auth_time,
                family.code_hash,
                family.max_lifetime_s,
            )
            await conn.execute(
                _INSERT_REFRESH, family.token_hash, family.lifetime_s, family.family_id
            )
        return True

    async def rotate_refresh_token(
        self,
        *,
        token_hash: str,
        new_token_hash: str,
        tenant_id: uuid.UUID,
        client_id: str,
        lifetime_s: int,
    ) -> RefreshRotation:
        """Use a refresh token once: mark it used and, if it was good, store its successor.

        The token must be of this tenant and client. Outcomes: `rotated` (with the
        family), `expired`, `revoked`, `reused` (a token already rotated: its whole family
        is revoked here, OAuth 2.0 Security BCP section 4.14.2) or `unknown`.
        """
        async with self._connection() as conn, conn.transaction():
            row = await conn.fetchrow(_CONSUME_REFRESH, token_hash, tenant_id, client_id)
            if row is None:
                revoked = await conn.fetchval(
                    _REVOKE_FAMILY_OF_USED_REFRESH, token_hash, tenant_id, client_id
                )
                outcome = RefreshOutcome.REUSED if revoked else RefreshOutcome.UNKNOWN
                return RefreshRotation(outcome, None)
            family = RefreshFamilyRow(
                id=row["id"],
                client_id=row["client_id"],
                scope=row["scope"],
                user=_granted_user(row),
                auth_time=row["auth_time"],
            )
            if row["is_revoked"]:
                return RefreshRotation(RefreshOutcome.REVOKED, family)
            if row["is_expired"]:
                return RefreshRotation(RefreshOutcome.EXPIRED, family)
            await conn.execute(_INSERT_REFRESH, new_token_hash, lifetime_s, family.id)
        return RefreshRotation(RefreshOutcome.ROTATED, family)

    async def revoke_refresh_family(
        self, family_id: uuid.UUID, tenant_id: uuid.UUID, reason: str
    ) -> None:
        """Revoke every token of a family (already revoked: unchanged)."""
        async with self._connection() as conn:
            await conn.execute(_REVOKE_FAMILY, family_id, tenant_id, reason)

    async def synced_user(self, tenant_id: uuid.UUID, user_id: uuid.UUID) -> GrantedUser | None:
        """A synced user as the directory last reported it, if still synced."""
        async with self._connection() as conn:
            row = await conn.fetchrow(_SYNCED_USER_BY_ID, tenant_id, user_id)
        return None if row is None else _granted_user(row)

    async def app_redirect_uris(
        self, tenant_id: uuid.UUID, client_id: uuid.UUID
    ) -> tuple[str, ...]:
        """The redirect URIs registered for an app of this tenant (none if no such app)."""
        async with self._connection() as conn:
            uris = await conn.fetchval(_APP_REDIRECT_URIS, tenant_id, client_id)
        return tuple(uris or ())


DATABASE = web.AppKey("database", Database)


# --------------------------------------------------------------------------- sts.codes
# Authorization codes and refresh tokens (common/migrations/006_codes.sql).


@dataclass(frozen=True, slots=True)
class GrantedUser:
    """The user a code or a token family was issued to (a snapshot, plus `tenant_id`)."""

    id: uuid.UUID
    username: str
    display_name: str
    immutable_id: str


@dataclass(frozen=True, slots=True)
class NewAuthorizationCode:
    code_hash: str
    tenant_id: uuid.UUID
    client_id: str
    redirect_uri: str
    code_challenge: str
    nonce: str | None
    scope: str
    user: GrantedUser
    auth_time: dt.datetime
    lifetime_s: int


@dataclass(frozen=True, slots=True)
class AuthorizationCodeRow:
    """A code as its (first) redemption found it."""

    client_id: str
    redirect_uri: str
    code_challenge: str
    nonce: str | None
    scope: str
    user: GrantedUser
    auth_time: dt.datetime
    is_expired: bool


@dataclass(frozen=True, slots=True)
class NewRefreshFamily:
    family_id: uuid.UUID
    token_hash: str  # the family's first token
    tenant_id: uuid.UUID
    client_id: str
    scope: str
    user: GrantedUser
    auth_time: dt.datetime
    code_hash: str | None  # the authorization code it was issued from
    lifetime_s: int  # each token's (sliding) lifetime
    max_lifetime_s: int  # the family's absolute lifetime


@dataclass(frozen=True, slots=True)
class RefreshFamilyRow:
    id: uuid.UUID
    client_id: str
    scope: str
    user: GrantedUser
    auth_time: dt.datetime


class RefreshOutcome(StrEnum):
    ROTATED = "rotated"
    EXPIRED = "expired"
    REVOKED = "revoked"
    REUSED = "reused"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class RefreshRotation:
    outcome: RefreshOutcome
    family: RefreshFamilyRow | None


def _granted_user(row: asyncpg.Record) -> GrantedUser:
    return GrantedUser(
        id=row["user_id"],
        username=row["username"],
        display_name=row["display_name"],
        immutable_id=row["immutable_id"],
    )


# Used or expired codes are kept a day, so that a replay is recognised as one (and the
# refresh tokens issued from the code revoked), then purged when the tenant issues codes.
_PURGE_AUTHORIZATION_CODES = """
DELETE FROM authorization_codes WHERE tenant_id = $1 AND expires_at < now() - interval '1 day'"""

_INSERT_AUTHORIZATION_CODE = """
INSERT INTO authorization_codes (code_hash, tenant_id, client_id, redirect_uri, code_challenge,
    nonce, scope, user_id, username, display_name, immutable_id, auth_time, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, now() + make_interval(secs => $13))"""

_CONSUME_AUTHORIZATION_CODE = """
UPDATE authorization_codes SET used_at = now()
WHERE code_hash = $1 AND tenant_id = $2 AND used_at IS NULL
RETURNING client_id, redirect_uri, code_challenge, nonce, scope, user_id, username,
    display_name, immutable_id, auth_time, expires_at <= now() AS is_expired"""

_MARK_AUTHORIZATION_CODE_REPLAYED = """
UPDATE authorization_codes SET replayed_at = coalesce(replayed_at, now())
WHERE code_hash = $1 AND tenant_id = $2 AND used_at IS NOT NULL
RETURNING code_hash"""

_LOCK_AUTHORIZATION_CODE = """
SELECT replayed_at IS NOT NULL FROM authorization_codes
WHERE code_hash = $1 AND tenant_id = $2 FOR UPDATE"""

_REVOKE_FAMILIES_OF_CODE = """
UPDATE refresh_token_families SET revoked_at = now(), revoked_reason = 'code_replayed'
WHERE code_hash = $1 AND tenant_id = $2 AND revoked_at IS NULL"""

# Families are kept until a day past their end (expiry or revocation), so that reuse of
# their tokens is still recognised; their tokens go with them (ON DELETE CASCADE).
_PURGE_REFRESH_FAMILIES = """
DELETE FROM refresh_token_families
WHERE tenant_id = $1
  AND (expires_at < now() - interval '1 day' OR revoked_at < now() - interval '1 day')"""

_INSERT_REFRESH_FAMILY = """
INSERT INTO refresh_token_families (id, tenant_id, client_id, scope, user_id, username,
    display_name, immutable_id, auth_time, code_hash, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now() + make_interval(secs => $11))"""

# A token lives `lifetime` from its issue (sliding), never past its family's end.
_INSERT_REFRESH = """
INSERT INTO refresh_tokens (token_hash, family_id, expires_at)
SELECT $1, id, least(now() + make_interval(secs => $2), expires_at)
FROM refresh_token_families WHERE id = $3"""

_CONSUME_REFRESH = """
UPDATE refresh_tokens r SET used_at = now()
FROM refresh_token_families f
WHERE r.token_hash = $1 AND r.used_at IS NULL
  AND f.id = r.family_id AND f.tenant_id = $2 AND f.client_id = $3
RETURNING f.id, f.client_id, f.scope, f.user_id, f.username, f.display_name, f.immutable_id,
    f.auth_time, r.expires_at <= now() AS is_expired, f.revoked_at IS NOT NULL AS is_revoked"""

_REVOKE_FAMILY_OF_USED_REFRESH = """
UPDATE refresh_token_families f
SET revoked_at = coalesce(f.revoked_at, now()),
    revoked_reason = coalesce(f.revoked_reason, 'refresh_token_reused')
FROM refresh_tokens r
WHERE r.token_hash = $1 AND r.used_at IS NOT NULL
  AND f.id = r.family_id AND f.tenant_id = $2 AND f.client_id = $3
RETURNING f.id"""

_REVOKE_FAMILY = """
UPDATE refresh_token_families SET revoked_at = now(), revoked_reason = $3
WHERE id = $1 AND tenant_id = $2 AND revoked_at IS NULL"""

_SYNCED_USER_BY_ID = """
SELECT id AS user_id, username, display_name, immutable_id
FROM users WHERE tenant_id = $1 AND id = $2"""

_APP_REDIRECT_URIS = "SELECT redirect_uris FROM apps WHERE tenant_id = $1 AND client_id = $2"


# --------------------------------------------------------------------------- sts.passwords
# Synced users, agent keys, smart lockout and the sign-in log (common/migrations/005).


@dataclass(frozen=True, slots=True)
class LockoutRow:
    """One user's smart lockout state as stored (see sts.lockout for the policy)."""

    failures: int = 0
    lockouts: int = 0
    locked_until: dt.datetime | None = None
    last_failure_at: dt.datetime | None = None
    recent_failures: tuple[bytes, ...] = ()
    in_flight: int = 0
    in_flight_until: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class SignInUserRow:
    """A synced user (users) with their lockout row, None when they have none."""

    id: uuid.UUID
    username: str
    display_name: str
    immutable_id: str
    lockout: LockoutRow | None


@dataclass(frozen=True, slots=True)
class AgentKeyRow:
    id: uuid.UUID
    kid: str
    spki: bytes
    cert_not_after: dt.datetime


class SignInRecord(NamedTuple):
    """One sign-in log row, in `SIGN_IN_COLUMNS` order (COPY takes tuples)."""

    at: dt.datetime
    tenant_id: uuid.UUID
    username: str
    user_id: uuid.UUID | None
    result: str
    code: int
    detail: str
    agent_id: uuid.UUID | None
    latency_ms: float
    client_ip: str
    correlation_id: str
    request_id: uuid.UUID | None
    client_id: str
    flow: str


SIGN_IN_COLUMNS = SignInRecord._fields


def _lockout(row: asyncpg.Record) -> LockoutRow:
    return LockoutRow(
        failures=row["failures"],
        lockouts=row["lockouts"],
        locked_until=row["locked_until"],
        last_failure_at=row["last_failure_at"],
        recent_failures=tuple(bytes(b) for b in row["recent_failures"]),
        in_flight=row["in_flight"],
        in_flight_until=row["in_flight_until"],
    )


_SIGN_IN_USER = """
SELECT u.id, u.username, u.display_name, u.immutable_id,
       l.failures, l.lockouts, l.locked_until, l.last_failure_at, l.recent_failures,
       l.in_flight, l.in_flight_until
FROM users u
LEFT JOIN lockouts l ON l.tenant_id = u.tenant_id AND l.username = u.username
WHERE u.tenant_id = $1 AND u.username = $2"""

# docs/design.md §3.1: at most 40 agents per tenant, and at most 40 recipients per envelope.
_ACTIVE_AGENTS = """
SELECT id, kid, spki, cert_not_after FROM agents
WHERE tenant_id = $1 AND cert_not_after > now()
ORDER BY registered_at DESC, id
LIMIT 40"""

# The no-op DO UPDATE takes the row lock (held to the end of the transaction) and makes
# RETURNING give the existing row; a new one starts at zero.
_LOCK_LOCKOUT = """
INSERT INTO lockouts (tenant_id, username) VALUES ($1, $2)
ON CONFLICT (tenant_id, username) DO UPDATE SET failures = lockouts.failures
RETURNING failures, lockouts, locked_until, last_failure_at, recent_failures,
    in_flight, in_flight_until"""

_UPDATE_LOCKOUT = """
UPDATE lockouts SET failures = $3, lockouts = $4, locked_until = $5, last_failure_at = $6,
    recent_failures = $7, in_flight = $8, in_flight_until = $9
WHERE tenant_id = $1 AND username = $2"""

_DELETE_LOCKOUT = "DELETE FROM lockouts WHERE tenant_id = $1 AND username = $2"

_READ_LOCKOUT = """
SELECT failures, lockouts, locked_until, last_failure_at, recent_failures, in_flight,
    in_flight_until
FROM lockouts WHERE tenant_id = $1 AND username = $2"""
