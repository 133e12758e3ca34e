"""Cloud-only administrators: the accounts the STS itself verifies (docs/design.md §3.1).

PTA admins (role `hybrid_identity_admin`) are cloud-only: their password is an argon2id
hash in `admins`, and they must be able to sign in when every agent is down (Entra's
advice: keep a cloud-only admin to fall back on). Synced users are verified by the agents,
not here.

Verification is tenant-scoped (one tenant's admin is unknown in another) and runs in a
bounded thread pool: argon2id is CPU- and memory-heavy (~50 ms, 64 MiB with the default
parameters) and must never block the event loop. An unknown username is verified against
a dummy hash made with the same parameters, so both answers take about the same time.
Unknown and wrong answers are different errors (AADSTS50034 and 50126), as in Entra; the
time does not tell them apart, the code does.

Smart lockout: the same admission as synced users (`sts.lockout.LockoutStore.enter`): a
place in flight is taken under the row lock before the hash is checked and settled after,
so parallel guesses cannot outrun the threshold (issue 8 finding 1), for the password
grant and `/devicelogin` alike. Every failure counts (no fingerprints: there is no
directory behind an admin to protect from repeats).
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from concurrent.futures import Executor
from dataclasses import dataclass

import structlog
from aiohttp import web
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from common.usernames import canonical_username
from sts.errors import InvalidCredentials, SmartLockout, UserNotFound
from sts.lockout import Admission, LockoutStore, Settlement, admin_key
from sts.queries import AdminRow, Database

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Admin:
    """An authenticated admin: what tokens are made of."""

    id: str
    tenant_id: str
    username: str
    display_name: str
    roles: tuple[str, ...]

    @classmethod
    def from_row(cls, row: AdminRow) -> Admin:
        return cls(str(row.id), str(row.tenant_id), row.username, row.display_name, row.roles)


ADMIN_CHECK_DEADLINE_S = 10.0  # how long an admin sign-in may wait for a place in flight


class AdminVerifier:
    """Checks admin passwords against their argon2id hashes, off the event loop."""

    def __init__(self, db: Database, executor: Executor, *, dummy_hash: str) -> None:
        self._db = db
        self._executor = executor
        self._dummy_hash = dummy_hash
        self._hasher = PasswordHasher()
        self._lockout: LockoutStore | None = None

    def attach_lockout(self, lockout: LockoutStore) -> None:
        """Put the admins under smart lockout (set once the lockout store exists).

        A guessed admin password would let an attacker register an agent and receive
        every user's password, so admins go through the same admission as synced users
        (`LockoutStore.enter` / `settle`), keyed on the admin's id (`admin_key`).
        """
        self._lockout = lockout

    @classmethod
    async def create(cls, db: Database, executor: Executor) -> AdminVerifier:
        """A verifier with a fresh dummy hash (made once, in the pool: ~50 ms)."""
        hasher = PasswordHasher()
        loop = asyncio.get_running_loop()
        dummy = await loop.run_in_executor(executor, hasher.hash, secrets.token_urlsafe(16))
        return cls(db, executor, dummy_hash=dummy)

    async def find(self, tenant_id: uuid.UUID, username: str) -> AdminRow | None:
        """The admin of this tenant a typed `username` names (common.usernames), if any."""
        name = canonical_username(username)
        return None if name is None else await self._db.admin_by_username(tenant_id, name)

    async def verify(
        self, tenant_id: uuid.UUID, username: str, password: str, *, row: AdminRow | None = None
    ) -> Admin:
        """The admin `username` of this tenant, if `password` is theirs.

        Raises UserNotFound (AADSTS50034) when the tenant has no such admin (after a
        dummy hash check, so both answers take about the same time, and without any
        lockout row: a typed name that matches no account leaves no trace),
        InvalidCredentials (AADSTS50126) when the password does not match, SmartLockout
        (AADSTS50053) while the admin is locked out: then no hash is checked. `row` is the
        admin `find` already returned, to save a second lookup.
        """
        if row is None:
            row = await self.find(tenant_id, username)
        if row is None:
            await self._check(self._dummy_hash, password)
            raise UserNotFound()
        if self._lockout is None:
            if not await self._check(row.password_hash, password):
                raise InvalidCredentials()
            return Admin.from_row(row)
        tenant, key = str(tenant_id), admin_key(row.id)
        verdict, _seen = await self._lockout.enter(
            tenant, key, time.time() + ADMIN_CHECK_DEADLINE_S
        )
        if verdict is not Admission.ADMITTED:
            raise SmartLockout()
        settlement = Settlement.NEUTRAL
        try:
            is_match = await self._check(row.password_hash, password)
            settlement = Settlement.SUCCESS if is_match else Settlement.FAILURE
        finally:
            new = await self._lockout.settle(tenant, key, time.time(), settlement)
        if not is_match:
            if self._lockout.policy.is_locked(new, time.time()):
                log.warning("smart_lockout_started", username=row.username, lockouts=new.lockouts)
            raise InvalidCredentials()
        return Admin.from_row(row)

    async def by_id(self, tenant_id: uuid.UUID, admin_id: uuid.UUID) -> Admin | None:
        """The admin with this id in this tenant, if it still exists."""
        row = await self._db.admin_by_id(tenant_id, admin_id)
        return None if row is None else Admin.from_row(row)

    async def _check(self, password_hash: str, password: str) -> bool:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._matches, password_hash, password)

    def _matches(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError):
            return False
        except InvalidHashError:
            # A malformed stored hash can never match; it is a data problem, not the user's.
            log.error("admin_password_hash_invalid")
            return False


ADMINS = web.AppKey("admins", AdminVerifier)
