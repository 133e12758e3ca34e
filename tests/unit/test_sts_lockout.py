"""Smart lockout policy (sts.lockout), pure: every call gets `now` from the test."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import Callable

import pytest

from sts.lockout import (
    MAX_WAITING_PER_KEY,
    Admission,
    LockoutPolicy,
    LockoutState,
    LockoutStore,
    Settlement,
    fingerprint,
    row_from_state,
    state_from_row,
)
from sts.queries import LockoutRow

POLICY = LockoutPolicy(threshold=3, duration_s=60, max_duration_s=300)


def fail(state: LockoutState, now: float, times: int = 1, fp: bytes | None = None) -> LockoutState:
    for _ in range(times):
        state = POLICY.after_failure(state, now, fp)
    return state


def test_threshold_failures_lock_for_the_duration() -> None:
    state = fail(LockoutState(), 1000.0, 2)
    assert state.failures == 2 and not POLICY.is_locked(state, 1000.0)
    state = fail(state, 1001.0)
    assert POLICY.is_locked(state, 1001.0)
    assert POLICY.locked_for(state, 1001.0) == 60
    assert POLICY.is_locked(state, 1060.9)
    assert not POLICY.is_locked(state, 1061.0)
    assert state.lockouts == 1 and state.failures == 0


def test_failures_while_locked_are_not_counted() -> None:
    locked = fail(LockoutState(), 0.0, 3)
    assert fail(locked, 10.0, 5) == locked


def test_each_further_lockout_doubles_up_to_the_cap() -> None:
    state = fail(LockoutState(), 0.0, 3)
    durations = [POLICY.locked_for(state, 0.0)]
    now = 0.0
    for _ in range(4):
        now = state.locked_until or now  # the lock has just ended
        # After a first lockout, the next failure locks again (Entra's smart lockout).
        state = fail(state, now)
        durations.append(POLICY.locked_for(state, now))
    assert durations == [60, 120, 240, 300, 300]


def test_success_resets_everything() -> None:
    state = fail(LockoutState(), 0.0, 3)
    assert POLICY.after_success(state) == LockoutState()
    assert POLICY.after_success(state).is_clear


def test_failures_are_forgotten_after_a_quiet_day() -> None:
    state = fail(LockoutState(), 0.0, 2)
    later = 0.0 + POLICY.forget_after_s + 1
    state = fail(state, later)
    assert state.failures == 1 and not POLICY.is_locked(state, later)


def test_a_wrong_password_that_reached_the_directory_always_counts() -> None:
    # A repeat is kept from the directory by `is_repeat`; one that reached it anyway (after
    # the window, or two sent at once) was counted there, so it counts here too.
    a, b = b"a" * 32, b"b" * 32
    state = fail(LockoutState(), 0.0, fp=a)
    assert state.failures == 1 and state.recent_failures == (a,)
    state = fail(state, 1.0, fp=b)
    assert state.failures == 2 and state.recent_failures == (b, a)
    state = fail(state, 2.0, fp=a)
    assert state.lockouts == 1 and state.recent_failures == (a, b)  # the third: locked


def test_a_repeat_sent_after_the_window_counts_and_reopens_the_window() -> None:
    policy = LockoutPolicy(threshold=10, repeat_window_s=900)
    state = policy.after_failure(LockoutState(), 1000.0, b"fp-1")
    later = 1000.0 + 901
    assert not policy.is_repeat(state, b"fp-1", later)  # sent to the directory again ...
    state = policy.after_failure(state, later, b"fp-1")
    assert state.failures == 2  # ... so counted, as the directory counted it
    assert policy.is_repeat(state, b"fp-1", later + 1)  # and answered from memory again


def test_an_old_wrong_password_sent_without_end_still_locks_the_user() -> None:
    # The review's attack: fail once with P, wait out the window, then send P forever.
    policy = LockoutPolicy(threshold=4, duration_s=60, repeat_window_s=900)
    state, now = LockoutState(), 0.0
    sent = 0
    while state.lockouts == 0 and sent < 100:
        if not policy.is_repeat(state, b"P", now):
            state = policy.after_failure(state, now, b"P")
            sent += 1
        now += 901
    assert state.lockouts == 1 and sent == 4  # the cloud locked at the threshold


def test_only_the_last_three_fingerprints_are_kept() -> None:
    policy = LockoutPolicy(threshold=100)
    state = LockoutState()
    for i in range(5):
        state = policy.after_failure(state, float(i), bytes([i]) * 32)
    assert state.recent_failures == tuple(bytes([i]) * 32 for i in (4, 3, 2))


def test_fingerprints_are_keyed_and_bound_to_the_user() -> None:
    key = b"k" * 32
    one = fingerprint(key, "t1", "alice@contoso.test", "Wrong-1")
    assert len(one) == 32
    assert one == fingerprint(key, "t1", "alice@contoso.test", "Wrong-1")
    assert one != fingerprint(b"x" * 32, "t1", "alice@contoso.test", "Wrong-1")
    assert one != fingerprint(key, "t2", "alice@contoso.test", "Wrong-1")
    assert one != fingerprint(key, "t1", "bob@contoso.test", "Wrong-1")
    assert b"Wrong-1" not in one


def test_rows_round_trip() -> None:
    state = LockoutState(2, 1, 1_700_000_060.5, 1_700_000_000.25, (b"x" * 32,))
    row = row_from_state(state)
    assert row.locked_until == dt.datetime.fromtimestamp(1_700_000_060.5, dt.UTC)
    assert state_from_row(row) == state
    assert state_from_row(None) == LockoutState()


def test_huge_lockout_counts_stay_capped() -> None:
    assert POLICY.lock_duration(10_000) == 300
    assert POLICY.lock_duration(0) == 0


@pytest.mark.parametrize(
    "kwargs", [{"threshold": 0}, {"duration_s": 0}, {"duration_s": 60, "max_duration_s": 30}]
)
def test_bad_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="threshold"):
        LockoutPolicy(**kwargs)  # type: ignore[arg-type]


def test_admission_counts_attempts_in_flight_and_forgets_a_dead_replicas() -> None:
    from sts.lockout import Admission, LockoutPolicy, LockoutState

    policy = LockoutPolicy(threshold=3, duration_s=60)
    now = 1_000.0
    state = LockoutState()
    for _ in range(3):
        assert policy.admission(state, now) is Admission.ADMITTED
        state = policy.with_admitted(state, now, until=now + 15)
    assert policy.admission(state, now) is Admission.BUSY  # 0 failures + 3 in flight
    state = policy.with_settled(state, now)
    assert policy.admission(state, now) is Admission.ADMITTED
    failed = policy.after_failure(state, now)
    assert policy.admission(failed, now) is Admission.BUSY  # 1 failure + 2 in flight
    # A replica that died with attempts in flight: its places expire with in_flight_until.
    assert policy.admission(failed, now + 16) is Admission.ADMITTED
    locked = LockoutState(lockouts=1, locked_until=now + 60)
    assert policy.admission(locked, now) is Admission.LOCKED


def test_a_repeat_is_known_within_the_window_and_forgotten_after_success() -> None:
    policy = LockoutPolicy(threshold=5, repeat_window_s=900)
    state = policy.after_failure(LockoutState(), 1000.0, b"fp-1")
    assert policy.is_repeat(state, b"fp-1", 1000.0 + 900)
    assert not policy.is_repeat(state, b"fp-1", 1000.0 + 901)  # the window has passed
    assert not policy.is_repeat(state, b"fp-2", 1001.0)
    assert not policy.is_repeat(state, None, 1001.0)  # no secret: never
    assert not policy.is_repeat(policy.after_success(state), b"fp-1", 1001.0)


@pytest.mark.parametrize(
    ("threshold", "duration_s", "window_s", "expected"),
    [
        (4, 60, 80, 5),  # the burst, and one more when the 60 s lockout ends
        (4, 120, 80, 4),  # the first lockout outlasts the window
        (4, 60, 59, 4),
        (1, 10, 75, 4),  # 1, then after 10, 10 + 20 and 10 + 20 + 40 = 70 s
    ],
)
def test_failures_within_a_window(
    threshold: int, duration_s: float, window_s: float, expected: int
) -> None:
    policy = LockoutPolicy(threshold=threshold, duration_s=duration_s, max_duration_s=3600)
    assert policy.failures_within(window_s) == expected


class _CountingDb:
    """A lockout table of one row that counts writes and reads (pure, in memory)."""

    def __init__(self) -> None:
        self.row = LockoutRow()
        self.writes = 0
        self.reads = 0

    async def update_lockout(
        self, _t: uuid.UUID, _u: str, mutate: Callable[[LockoutRow], LockoutRow]
    ) -> LockoutRow:
        new = mutate(self.row)
        if new != self.row:
            self.writes += 1
        self.row = new
        return new

    async def read_lockout(self, _t: uuid.UUID, _u: str) -> LockoutRow:
        self.reads += 1
        return self.row


async def test_waiting_for_a_place_polls_without_writing_and_backs_off() -> None:
    db = _CountingDb()
    store = LockoutStore(db, LockoutPolicy(threshold=1), key=None)  # type: ignore[arg-type]
    tenant = str(uuid.uuid4())
    first, _ = await store.enter(tenant, "u", time.time() + 5)
    assert first is Admission.ADMITTED and db.writes == 1  # threshold 1: one place
    waiter = asyncio.create_task(store.enter(tenant, "u", time.time() + 5))
    await asyncio.sleep(0.5)
    assert not waiter.done()
    assert db.writes == 1  # waiting wrote nothing ...
    assert 3 <= db.reads <= 12  # ... and polled with backoff (not every 20 ms)
    await store.settle(tenant, "u", time.time(), Settlement.SUCCESS)
    verdict, _ = await asyncio.wait_for(waiter, 2)
    assert verdict is Admission.ADMITTED


async def test_too_many_waiters_for_one_account_are_refused_at_once() -> None:
    db = _CountingDb()
    store = LockoutStore(db, LockoutPolicy(threshold=1), key=None)  # type: ignore[arg-type]
    tenant = str(uuid.uuid4())
    deadline = time.time() + 3
    assert (await store.enter(tenant, "u", deadline))[0] is Admission.ADMITTED
    waiters = [asyncio.create_task(store.enter(tenant, "u", deadline)) for _ in range(70)]
    await asyncio.sleep(0.1)
    refused = [w for w in waiters if w.done()]
    assert len(refused) == 70 - MAX_WAITING_PER_KEY
    assert all(w.result()[0] is Admission.LOCKED for w in refused)
    for w in waiters:
        w.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
