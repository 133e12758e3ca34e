"""Who signs in during a load test: the user mix, the user picked for each request, and
the answers that count as expected for it.

The mix (``--mix good=90,wrong=10``) is a list of kinds with integer weights; requests
follow it exactly, not just on average, through a smooth weighted round-robin (the
nginx upstream algorithm): every window of ``sum(weights)`` requests holds each kind
``weight`` times, evenly spread, so a short smoke run already has the asked proportions.

Kinds and their users (``UserPicker``):
- ``good``: a bulk user (``user0001..``) with the right password, round-robin over the
  first part of the bulk users;
- ``wrong``: a bulk user with a wrong password, round-robin over a separate tail slice
  (the last quarter of the bulk users, at least one user);
- ``unknown``: a user that does not exist in the tenant's domain;
- ``expired``, ``must_change``, ``locked``, ``disabled``: the tenant's named users in
  that directory state, with their right password.

Lockout safety. Wrong passwords count toward the STS smart lockout (threshold 10 by
default; the dev stack runs it at 4 so that it trips before the directory) and the
directory's own lockout (slapd ppolicy here, like AD: 5 failures within 60 seconds lock
a user for 15 minutes). So wrong attempts go only to the tail slice, spread round-robin,
and at most ``max_wrong_per_user`` (default 2, at most 3: below both) per user per run;
once every user of the slice reached it, further ``wrong`` draws become ``good`` ones and
are counted in ``wrong_capped``. After the run the load tool signs each of those users in
once with the right password ("heal"), which clears their failure count in the directory
(a successful bind removes ppolicy's ``pwdFailureTime``, as it resets AD's
``badPwdCount``) and at the STS, so repeated runs do not add up to a lockout.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from bench.target import TenantInfo

__all__ = [
    "DEFAULT_MAX_WRONG_PER_USER",
    "DIRECTORY_LOCKOUT_THRESHOLD",
    "EXPECTED",
    "MAX_WRONG_PER_USER",
    "SMART_LOCKOUT",
    "SUCCESS",
    "Attempt",
    "Kind",
    "Mix",
    "MixError",
    "UserPicker",
    "parse_mix",
]

SUCCESS: Final = "success"
SMART_LOCKOUT: Final = "AADSTS50053"
DIRECTORY_LOCKOUT_THRESHOLD: Final = 5  # pwdMaxFailure of the stack's slapd policy
STACK_SMART_LOCKOUT_THRESHOLD: Final = 4  # PTA_STS_LOCKOUT_THRESHOLD of the dev stack
MAX_WRONG_PER_USER: Final = min(DIRECTORY_LOCKOUT_THRESHOLD, STACK_SMART_LOCKOUT_THRESHOLD) - 1
DEFAULT_MAX_WRONG_PER_USER: Final = 2
WRONG_SUFFIX: Final = "-wrong-by-pta-load"  # a password that is never a user's


class MixError(ValueError):
    """The --mix value is not valid: give kind=weight pairs such as good=90,wrong=10."""


class Kind(enum.StrEnum):
    GOOD = "good"
    WRONG = "wrong"
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    MUST_CHANGE = "must_change"
    LOCKED = "locked"
    DISABLED = "disabled"


# The directory state (stack.json `users[].state`) of the named users each kind uses.
_STATE_OF: Final = {
    Kind.EXPIRED: "password_expired",
    Kind.MUST_CHANGE: "must_change_password",
    Kind.LOCKED: "account_locked",
    Kind.DISABLED: "account_disabled",
}

# The answers that count as expected per kind (docs/design.md §5).
# Smart lockout (50053) is accepted for every failing kind: the STS may lock a user who
# keeps failing, which is the system working, not an error of the load test.
EXPECTED: Final[Mapping[Kind, frozenset[str]]] = {
    Kind.GOOD: frozenset({SUCCESS}),
    Kind.WRONG: frozenset({"AADSTS50126", SMART_LOCKOUT}),
    Kind.UNKNOWN: frozenset({"AADSTS50034", "AADSTS50126", SMART_LOCKOUT}),
    Kind.EXPIRED: frozenset({"AADSTS50144", SMART_LOCKOUT}),
    Kind.MUST_CHANGE: frozenset({"AADSTS50055", SMART_LOCKOUT}),
    Kind.LOCKED: frozenset({SMART_LOCKOUT}),
    Kind.DISABLED: frozenset({"AADSTS50057", SMART_LOCKOUT}),
}


@dataclass(frozen=True, slots=True)
class Mix:
    """Kinds with positive integer weights, in the order given."""

    weights: tuple[tuple[Kind, int], ...]

    @property
    def total(self) -> int:
        return sum(w for _, w in self.weights)

    def share(self, kind: Kind) -> float:
        return sum(w for k, w in self.weights if k == kind) / self.total

    def as_dict(self) -> dict[str, int]:
        return {str(k): w for k, w in self.weights}

    def __str__(self) -> str:
        return ",".join(f"{k}={w}" for k, w in self.weights)


def parse_mix(text: str) -> Mix:
    """Parse ``kind=weight,...`` (weights are non-negative integers, e.g. percentages).

    Kinds with weight 0 are dropped. Raises ``MixError`` for an unknown kind, a kind
    given twice, a weight that is not a non-negative integer, or all weights 0.
    """
    weights: dict[Kind, int] = {}
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip().lower().replace("-", "_")
        try:
            kind = Kind(name)
        except ValueError:
            known = ", ".join(k.value for k in Kind)
            raise MixError(f"unknown kind {name!r} in --mix; kinds: {known}") from None
        if kind in weights:
            raise MixError(f"kind {kind} given twice in --mix")
        if not sep or not value.strip().isdigit():
            raise MixError(f"weight of {kind} must be a non-negative integer, not {value!r}")
        weights[kind] = int(value)
    kept = tuple((k, w) for k, w in weights.items() if w > 0)
    if not kept:
        raise MixError("--mix needs at least one kind with a positive weight")
    return Mix(kept)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One sign-in to send: who, with which password, and what kind it is."""

    kind: Kind
    username: str
    password: str = field(repr=False)

    @property
    def expected(self) -> frozenset[str]:
        return EXPECTED[self.kind]


class UserPicker:
    """Pick the user of each request for a mix over one tenant (see module docstring).

    Not thread-safe; one per run. Raises ``MixError`` at construction when the tenant has
    no user for a kind of the mix or ``max_wrong_per_user`` is not in 1..4.
    """

    def __init__(
        self,
        tenant: TenantInfo,
        mix: Mix,
        *,
        max_wrong_per_user: int = DEFAULT_MAX_WRONG_PER_USER,
    ) -> None:
        if not 1 <= max_wrong_per_user <= MAX_WRONG_PER_USER:
            raise MixError(
                f"max wrong passwords per user must be 1..{MAX_WRONG_PER_USER}: the stack's "
                f"smart lockout trips at {STACK_SMART_LOCKOUT_THRESHOLD} failures, the "
                f"directory locks a user at {DIRECTORY_LOCKOUT_THRESHOLD} failures in 60 seconds"
            )
        self.mix = mix
        self.tenant = tenant
        self.max_wrong_per_user = max_wrong_per_user
        bulk = tenant.bulk
        self.wrong_slice = max(1, bulk.count // 4) if bulk.count > 1 else 0
        self.good_count = bulk.count - self.wrong_slice
        if self.good_count < 1 and mix.share(Kind.GOOD) > 0:
            raise MixError(f"tenant {tenant.domain} has too few bulk users for good sign-ins")
        if mix.share(Kind.WRONG) > 0 and self.wrong_slice < 1:
            raise MixError(f"tenant {tenant.domain} has too few bulk users for wrong passwords")
        self._named: dict[Kind, list[tuple[str, str]]] = {}
        for kind, state in _STATE_OF.items():
            users = [(u.username, u.password) for u in tenant.named_in_state(state)]
            if mix.share(kind) > 0 and not users:
                raise MixError(f"tenant {tenant.domain} has no user in state {state}")
            self._named[kind] = users
        self._current = {k: 0 for k, _ in mix.weights}
        self._next = {k: 0 for k in Kind}
        self.wrong_counts: dict[str, int] = {}
        self.wrong_capped = 0

    def _kind(self) -> Kind:
        # Smooth weighted round-robin: add each weight, take the largest, subtract total.
        best: Kind | None = None
        for kind, weight in self.mix.weights:
            self._current[kind] += weight
            if best is None or self._current[kind] > self._current[best]:
                best = kind
        assert best is not None  # a Mix has at least one kind
        self._current[best] -= self.mix.total
        return best

    def _round_robin(self, kind: Kind, size: int) -> int:
        i = self._next[kind] % size
        self._next[kind] += 1
        return i

    def next(self) -> Attempt:
        """The next request's user, password and kind."""
        kind = self._kind()
        bulk = self.tenant.bulk
        if kind is Kind.WRONG:
            wrong_sent = sum(self.wrong_counts.values())
            if wrong_sent >= self.wrong_slice * self.max_wrong_per_user:
                self.wrong_capped += 1
                kind = Kind.GOOD
            else:
                n = self.good_count + 1 + self._round_robin(kind, self.wrong_slice)
                username = bulk.username(n)
                self.wrong_counts[username] = self.wrong_counts.get(username, 0) + 1
                return Attempt(kind, username, bulk.password + WRONG_SUFFIX)
        if kind is Kind.GOOD:
            n = 1 + self._round_robin(kind, self.good_count)
            return Attempt(kind, bulk.username(n), bulk.password)
        if kind is Kind.UNKNOWN:
            i = self._round_robin(kind, 1_000_000)
            return Attempt(kind, f"pta-load-nobody-{i:06d}@{self.tenant.domain}", "x" * 12)
        users = self._named[kind]
        username, password = users[self._round_robin(kind, len(users))]
        return Attempt(kind, username, password)

    def heal_list(self) -> list[Attempt]:
        """One right-password sign-in for each user that got a wrong password this run."""
        return [
            Attempt(Kind.GOOD, username, self.tenant.bulk.password)
            for username in sorted(self.wrong_counts)
        ]
