"""Smart lockout: stop password guessing in the cloud, before the directory locks the user.

docs/design.md §7: per user, threshold 10 and 60 s by default, each further
lockout longer, counted across all STS replicas, configured below the directory's own
lockout threshold so that attackers are stopped before they lock users out on-premises.

The policy (`LockoutPolicy`, pure: the caller passes `now`) follows Entra's smart lockout:
- only `invalid_credentials` answers count as failures; a locked user is answered
  AADSTS50053 without any agent being asked, and those attempts do not count;
- `threshold` failures lock the user for `duration_s`; once a user has been locked, the
  next failure after the lock ends locks again, each time twice as long, up to
  `max_duration_s`;
- a success forgets everything; so does `forget_after_s` (a day) without any failure;
- with a fingerprint key, the last `remembered_passwords` (3, as Entra) wrong passwords
  are remembered as keyed fingerprints (HMAC-SHA256 under a per-deployment secret, never
  a plain hash, which would be a cheap offline guessing target): typing the same wrong
  password again does not count again, and within `repeat_window_s` of the latest
  failure it is not even sent: `is_repeat` answers it AADSTS50126 from memory, so a
  directory that counts every failed bind (OpenLDAP ppolicy does; AD exempts only
  recent old passwords) never sees a stale password twice (issue 8 finding 12);
- every account goes through one admission (`LockoutStore.enter` / `settle`), keyed on
  the account found (`user_key`, `admin_key`), never on a typed name.

State lives in PostgreSQL (`lockouts`, migration 005) so every replica counts together;
`LockoutStore` converts rows and runs the read-modify-write under a row lock. The read
on the hot path comes with the user lookup (`Database.sign_in_user`), so a sign-in costs
no extra round trip for lockout unless it fails or clears a previous failure.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import enum
import hashlib
import hmac
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from sts.queries import Database, LockoutRow

FINGERPRINT_LABEL = b"pta.lockout.password"


class Admission(enum.Enum):
    """The answer to "may this attempt be sent to the agents now?"."""

    ADMITTED = "admitted"
    BUSY = "busy"  # enough attempts of this user are in flight: wait
    LOCKED = "locked"


class Settlement(enum.Enum):
    """What an admitted attempt came to, for the counters."""

    FAILURE = "failure"  # a wrong password
    SUCCESS = "success"
    # No genuine answer before the deadline (timeout, only forged replies): the agent
    # may still be binding, so the place stays in flight until its `in_flight_until`
    # (deadline + IN_FLIGHT_MARGIN_S; agents start no bind near the deadline), and a
    # genuine late reply settles it when it comes (`sts.dispatcher.LateReply`).
    UNANSWERED = "unanswered"
    NEUTRAL = "neutral"  # anything else: neither counts nor clears


@dataclass(frozen=True, slots=True)
class LockoutState:
    """One user's lockout counters. Times are Unix seconds."""

    failures: int = 0
    lockouts: int = 0
    locked_until: float | None = None
    last_failure_at: float | None = None
    recent_failures: tuple[bytes, ...] = ()
    in_flight: int = 0  # attempts sent to the agents and not answered yet
    in_flight_until: float | None = None  # in_flight is trusted until then

    @property
    def is_clear(self) -> bool:
        """True when there is nothing to remember (no row needed)."""
        return self == LockoutState()


@dataclass(frozen=True, slots=True)
class LockoutPolicy:
    """The rules (see module docstring); `after_failure` and friends are pure."""

    threshold: int = 10
    duration_s: float = 60.0
    max_duration_s: float = 3600.0
    forget_after_s: float = 86_400.0
    remembered_passwords: int = 3
    repeat_window_s: float = 900.0  # a known wrong password is answered from memory this long

    def __post_init__(self) -> None:
        if self.threshold < 1 or self.duration_s <= 0 or self.max_duration_s < self.duration_s:
            raise ValueError("need threshold >= 1 and 0 < duration_s <= max_duration_s")

    def is_repeat(self, state: LockoutState, fingerprint: bytes | None, now: float) -> bool:
        """True when `fingerprint` is one of the user's wrong passwords of the last
        `repeat_window_s` (counted from the latest failure the directory answered).

        Such a password is answered "wrong" without being sent (issue 8 finding 12): the
        directory, which counts every failed bind, never sees a stale password again. A
        success forgets the fingerprints (`after_success`); the window bounds the one case
        memory can be wrong, a password changed on-premises to a recent wrong one.
        """
        if fingerprint is None or state.last_failure_at is None:
            return False
        if now - state.last_failure_at > self.repeat_window_s:
            return False
        return fingerprint in state.recent_failures

    def failures_within(self, window_s: float) -> int:
        """The most failures this policy lets through to the directory within any
        `window_s` seconds: a burst of `threshold` (all in flight at once), then one per
        lockout, each lockout twice as long (capped). Pure; used at start-up to check the
        cloud trips before the directory (`sts.settings`)."""
        count = self.threshold
        elapsed = 0.0
        lockouts = 1
        while count < 10_000:
            elapsed += self.lock_duration(lockouts)
            if elapsed > window_s:
                return count
            count += 1
            lockouts += 1
        return count

    def locked_for(self, state: LockoutState, now: float) -> float:
        """Seconds the user stays locked; 0 when they may sign in."""
        if state.locked_until is None:
            return 0.0
        return max(state.locked_until - now, 0.0)

    def is_locked(self, state: LockoutState, now: float) -> bool:
        return self.locked_for(state, now) > 0

    def lock_duration(self, lockouts: int) -> float:
        """How long the `lockouts`-th lockout lasts: duration_s doubling, capped."""
        if lockouts < 1:
            return 0.0
        # Cap the exponent too: 2**10000 would be a very large float before min().
        return min(self.duration_s * 2.0 ** min(lockouts - 1, 64), self.max_duration_s)

    def after_failure(
        self, state: LockoutState, now: float, fingerprint: bytes | None = None
    ) -> LockoutState:
        """The state after a wrong password (`invalid_credentials`) at `now`."""
        if self.is_locked(state, now):
            return state  # not counted: a locked user is never sent to an agent
        if state.last_failure_at is not None and now - state.last_failure_at > self.forget_after_s:
            state = LockoutState()
        # Every failure that reached the directory counts, a repeated password too: the
        # directory counted that bind, so a cloud that skipped it would fall behind and
        # let the directory lock the user first. Repeats are kept from the directory
        # instead, answered from memory within the window (`is_repeat`), and those count
        # nothing. The fingerprint moves to the front, so the newest stay remembered.
        recent = state.recent_failures
        if fingerprint is not None:
            rest = (known for known in recent if known != fingerprint)
            recent = (fingerprint, *rest)[: self.remembered_passwords]
        failures = state.failures + 1
        if failures >= self.threshold or state.lockouts > 0:
            lockouts = state.lockouts + 1
            return LockoutState(
                failures=0,
                lockouts=lockouts,
                locked_until=now + self.lock_duration(lockouts),
                last_failure_at=now,
                recent_failures=recent,
            )
        return dataclasses.replace(
            state, failures=failures, last_failure_at=now, recent_failures=recent
        )

    def after_success(self, _state: LockoutState) -> LockoutState:
        """A valid password resets everything."""
        return LockoutState()

    # -- attempts in flight: parallel guesses must not outrun the threshold ---------------

    def live_in_flight(self, state: LockoutState, now: float) -> int:
        """Attempts still in flight (an expired count is from a replica that died)."""
        if state.in_flight_until is None or state.in_flight_until < now:
            return 0
        return state.in_flight

    def admission(self, state: LockoutState, now: float) -> Admission:
        """May one more attempt go to the agents now?

        Each attempt in flight could still turn out a failure, so failures plus attempts
        in flight stay below the threshold (after a lockout, where each failure locks
        again, one at a time). More than that waits (BUSY) instead of being refused: a
        legitimate burst of sign-ins of one user is delayed, never locked out.
        """
        if self.is_locked(state, now):
            return Admission.LOCKED
        failures = state.failures
        if state.last_failure_at is not None and now - state.last_failure_at > self.forget_after_s:
            failures = 0
        capacity = 1 if state.lockouts > 0 else self.threshold - failures
        if self.live_in_flight(state, now) >= capacity:
            return Admission.BUSY
        return Admission.ADMITTED

    def with_admitted(self, state: LockoutState, now: float, until: float) -> LockoutState:
        """One more attempt in flight, trusted until `until` (its deadline and a margin)."""
        live = self.live_in_flight(state, now)
        keep = state.in_flight_until if live and state.in_flight_until else until
        return dataclasses.replace(state, in_flight=live + 1, in_flight_until=max(keep, until))

    def with_settled(self, state: LockoutState, now: float) -> LockoutState:
        """One attempt fewer in flight."""
        live = max(self.live_in_flight(state, now) - 1, 0)
        return dataclasses.replace(
            state, in_flight=live, in_flight_until=state.in_flight_until if live else None
        )


def fingerprint(key: bytes, tenant_id: str, username: str, password: str) -> bytes:
    """The keyed fingerprint of a wrong password, bound to its user (HMAC-SHA256).

    Bound to tenant and user so that one user's fingerprints say nothing about another's.
    Never log or return it to a client.
    """
    message = b"\x00".join(
        (FINGERPRINT_LABEL, tenant_id.encode(), username.encode(), password.encode())
    )
    return hmac.digest(key, message, hashlib.sha256)


def _to_unix(value: dt.datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _to_datetime(value: float | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromtimestamp(value, dt.UTC)


def state_from_row(row: LockoutRow | None) -> LockoutState:
    if row is None:
        return LockoutState()
    return LockoutState(
        failures=row.failures,
        lockouts=row.lockouts,
        locked_until=_to_unix(row.locked_until),
        last_failure_at=_to_unix(row.last_failure_at),
        recent_failures=row.recent_failures,
        in_flight=row.in_flight,
        in_flight_until=_to_unix(row.in_flight_until),
    )


def row_from_state(state: LockoutState) -> LockoutRow:
    return LockoutRow(
        failures=state.failures,
        lockouts=state.lockouts,
        locked_until=_to_datetime(state.locked_until),
        last_failure_at=_to_datetime(state.last_failure_at),
        recent_failures=state.recent_failures,
        in_flight=state.in_flight,
        in_flight_until=_to_datetime(state.in_flight_until),
    )


IN_FLIGHT_MARGIN_S = 5.0  # how long past its deadline an attempt's place stays reserved
ADMISSION_POLL_S = 0.02  # a waiting attempt's first look again for a place in flight ...
ADMISSION_POLL_MAX_S = 0.1  # ... doubling up to this (with jitter)
MAX_WAITING_PER_KEY = 64  # per process: attempts beyond it are answered LOCKED at once


def user_key(stored_username: str) -> str:
    """The lockout key of a synced user: their stored (canonical) name, never a typed one."""
    return stored_username


def admin_key(admin_id: uuid.UUID | str) -> str:
    """The lockout key of a cloud-only admin: their id (usernames never hold a space)."""
    return f"admin {admin_id}"


class LockoutStore:
    """Applies the policy to the shared rows. Raises DatabaseUnavailable.

    One admission mechanism for every account that can be guessed at (synced users and
    cloud-only admins alike, whatever the flow): `enter` takes a place in flight under
    the row lock before the password is checked anywhere, `settle` releases it and counts
    what the check came to. `key` is always the key of an account that exists (`user_key`,
    `admin_key`): a name that matches no account never gets a row.
    """

    def __init__(
        self,
        db: Database,
        policy: LockoutPolicy,
        *,
        key: bytes | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self.policy = policy
        self._key = key
        self._clock = clock
        self._waiting: dict[tuple[str, str], int] = {}  # attempts waiting per account

    def fingerprint(self, tenant_id: str, username: str, password: str) -> bytes | None:
        """The keyed fingerprint of `password`, or None when no secret is configured."""
        if self._key is None:
            return None
        return fingerprint(self._key, tenant_id, username, password)

    async def admit(
        self, tenant_id: str, username: str, now: float, until: float
    ) -> tuple[Admission, LockoutState]:
        """Reserve a place in flight for one attempt, under the row lock (all replicas)."""
        seen: list[tuple[Admission, LockoutState]] = []

        def mutate(row: LockoutRow) -> LockoutRow:
            state = state_from_row(row)
            verdict = self.policy.admission(state, now)
            seen.append((verdict, state))
            if verdict is not Admission.ADMITTED:
                return row
            return row_from_state(self.policy.with_admitted(state, now, until))

        await self._db.update_lockout(uuid.UUID(tenant_id), username, mutate)
        return seen[-1]

    async def enter(
        self, tenant_id: str, key: str, deadline: float, clock: Callable[[], float] | None = None
    ) -> tuple[Admission, LockoutState]:
        """Wait for a place in flight until `deadline`: ADMITTED, or LOCKED with the state.

        Parallel attempts of one account wait for earlier answers instead of all reaching
        the password check at once; one still waiting at `deadline` is answered LOCKED (it
        was only kept out because enough others could still lock the account).
        """
        now = clock or self._clock
        verdict, seen = await self.admit(tenant_id, key, now(), deadline + IN_FLIGHT_MARGIN_S)
        if verdict is not Admission.BUSY:
            return verdict, seen
        # Waiting costs reads, not writes: the row is polled without a lock (backing off,
        # with jitter so waiters do not move in step) and locked again only when a place
        # looks free. A flood of parallel guesses at one account is bounded per process.
        waiting = (tenant_id, key)
        if self._waiting.get(waiting, 0) >= MAX_WAITING_PER_KEY:
            return Admission.LOCKED, seen
        self._waiting[waiting] = self._waiting.get(waiting, 0) + 1
        try:
            delay = ADMISSION_POLL_S
            while True:
                if now() >= deadline:
                    return Admission.LOCKED, seen
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 -- jitter
                delay = min(delay * 2, ADMISSION_POLL_MAX_S)
                row = await self._db.read_lockout(uuid.UUID(tenant_id), key)
                if self.policy.admission(state_from_row(row), now()) is Admission.BUSY:
                    continue
                verdict, seen = await self.admit(
                    tenant_id, key, now(), deadline + IN_FLIGHT_MARGIN_S
                )
                if verdict is not Admission.BUSY:
                    return verdict, seen
        finally:
            self._waiting[waiting] -= 1
            if not self._waiting[waiting]:
                del self._waiting[waiting]

    async def settle(
        self,
        tenant_id: str,
        username: str,
        now: float,
        settlement: Settlement,
        password_fingerprint: bytes | None = None,
        *,
        release: bool = True,
    ) -> LockoutState:
        """Release an admitted attempt's place and count what it came to.

        UNANSWERED keeps the place (it expires by itself); `release=False` counts without
        releasing (a late reply whose place has expired already).
        """

        def mutate(row: LockoutRow) -> LockoutRow:
            state = state_from_row(row)
            is_kept = settlement is Settlement.UNANSWERED or not release
            released = state if is_kept else self.policy.with_settled(state, now)
            if settlement is Settlement.FAILURE:
                new = self.policy.after_failure(state, now, password_fingerprint)
            elif settlement is Settlement.SUCCESS:
                new = self.policy.after_success(state)
            else:
                new = state
            return row_from_state(
                dataclasses.replace(
                    new, in_flight=released.in_flight, in_flight_until=released.in_flight_until
                )
            )

        row = await self._db.update_lockout(uuid.UUID(tenant_id), username, mutate)
        return state_from_row(row)


LOCKOUT = web.AppKey("lockout", LockoutStore)
