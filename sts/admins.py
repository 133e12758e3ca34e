"""Cloud-only administrators: the accounts the STS itself verifies (DESIGN.md flow 1).

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

from sts.errors import InvalidCredentials, SmartLockout, UserNotFound
from sts.lockout import LockoutStore
from sts.queries import AdminRow, Database


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
        every user's password, so admins get the same lockout as synced users, counted
        in a key space of their own (`admin <username>`; usernames never hold a space).
        """
        self._lockout = lockout

    @classmethod
    async def create(cls, db: Database, executor: Executor) -> AdminVerifier:
        """A verifier with a fresh dummy hash (made once, in the pool: ~50 ms)."""
        hasher = PasswordHasher()
        loop = asyncio.get_running_loop()
        dummy = await loop.run_in_executor(executor, hasher.hash, secrets.token_urlsafe(16))
        return cls(db, executor, dummy_hash=dummy)

    async def verify(self, tenant_id: uuid.UUID, username: str, password: str) -> Admin:
        """The admin `username` of this tenant, if `password` is theirs.

        Raises UserNotFound (AADSTS50034) when the tenant has no such admin,
        InvalidCredentials (AADSTS50126) when the password does not match, SmartLockout
        (AADSTS50053) while the admin is locked out (no hash is checked then).
        """
        key = f"admin {username.lower()}"
        state = None
        if self._lockout is not None:
            state = await self._lockout.current(str(tenant_id), key)
            if self._lockout.policy.is_locked(state, time.time()):
                raise SmartLockout()
        row = await self._db.admin_by_username(tenant_id, username)
        is_match = await self._check(row.password_hash if row else self._dummy_hash, password)
        if row is None:
            raise UserNotFound()
        if not is_match:
            if self._lockout is not None:
                await self._lockout.record_failure(str(tenant_id), key, time.time(), None)
            raise InvalidCredentials()
        if self._lockout is not None and state is not None:
            await self._lockout.record_success(str(tenant_id), key, state)
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
            structlog.get_logger(__name__).error("admin_password_hash_invalid")
            return False


ADMINS = web.AppKey("admins", AdminVerifier)
