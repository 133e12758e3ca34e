"""ReplayCache: ids remembered until their deadline, expired ones evicted first, and a
hard cap that fails closed instead of forgetting a live id."""

from __future__ import annotations

import time
import uuid

import pytest

from agent.replay import Admission, ReplayCache

NOW = 1_800_000_000.0


def _id() -> str:
    return str(uuid.uuid4())


def test_first_sight_is_new_and_a_second_is_a_replay() -> None:
    cache = ReplayCache()
    rid = _id()
    assert cache.check_and_add(rid, NOW + 10, NOW) is Admission.NEW
    assert cache.check_and_add(rid, NOW + 10, NOW + 1) is Admission.REPLAYED
    assert cache.check_and_add(rid, NOW + 10, NOW + 9.999) is Admission.REPLAYED
    assert rid in cache and len(cache) == 1


def test_an_id_is_forgotten_once_its_deadline_passed() -> None:
    cache = ReplayCache()
    rid = _id()
    cache.check_and_add(rid, NOW + 10, NOW)
    # At the deadline check_fresh refuses the envelope anyway; the id may go.
    assert cache.check_and_add(_id(), NOW + 30, NOW + 12) is Admission.NEW
    assert rid not in cache
    assert len(cache) == 1


def test_a_replay_with_a_different_deadline_is_still_a_replay() -> None:
    """expires_at is attacker-controlled before decryption: the id alone decides."""
    cache = ReplayCache()
    rid = _id()
    cache.check_and_add(rid, NOW + 10, NOW)
    assert cache.check_and_add(rid, NOW + 100, NOW + 1) is Admission.REPLAYED


def test_an_id_seen_again_after_expiry_is_remembered_with_its_new_deadline() -> None:
    cache = ReplayCache()
    rid = _id()
    cache.check_and_add(rid, NOW + 0.5, NOW)
    assert cache.check_and_add(rid, NOW + 20, NOW + 0.7) is Admission.NEW
    # The old bucket (second NOW+1) is swept; the new deadline keeps the id.
    cache.evict(NOW + 5)
    assert rid in cache
    assert cache.check_and_add(rid, NOW + 20, NOW + 6) is Admission.REPLAYED
    cache.evict(NOW + 20)
    assert rid not in cache


def test_evict_removes_exactly_the_expired() -> None:
    cache = ReplayCache()
    short = [_id() for _ in range(100)]
    long = [_id() for _ in range(100)]
    for rid in short:
        cache.check_and_add(rid, NOW + 5, NOW)
    for rid in long:
        cache.check_and_add(rid, NOW + 60, NOW)
    assert cache.evict(NOW + 5) == 100
    assert all(rid in cache for rid in long)
    assert not any(rid in cache for rid in short)
    assert cache.evict(NOW + 59.5) == 0
    assert cache.evict(NOW + 60) == 100
    assert len(cache) == 0


def test_fractional_deadlines_are_kept_until_they_pass() -> None:
    cache = ReplayCache()
    rid = _id()
    cache.check_and_add(rid, NOW + 3.2, NOW)
    cache.evict(NOW + 3.1)
    assert rid in cache
    assert cache.check_and_add(rid, NOW + 3.2, NOW + 3.15) is Admission.REPLAYED


def test_an_already_expired_deadline_is_swept_next() -> None:
    cache = ReplayCache()
    cache.check_and_add(_id(), NOW + 10, NOW)
    late = _id()
    assert cache.check_and_add(late, NOW - 5, NOW) is Admission.NEW
    cache.evict(NOW + 1)
    assert late not in cache


def test_full_of_live_ids_fails_closed_and_remembers_nothing() -> None:
    cache = ReplayCache(max_entries=3)
    live = [_id() for _ in range(3)]
    for rid in live:
        assert cache.check_and_add(rid, NOW + 10, NOW) is Admission.NEW
    newcomer = _id()
    assert cache.check_and_add(newcomer, NOW + 10, NOW + 1) is Admission.FULL
    assert newcomer not in cache
    # A live id is never forgotten to make room: its replay is still caught.
    assert cache.check_and_add(live[0], NOW + 10, NOW + 1) is Admission.REPLAYED


def test_expired_ids_make_room_before_the_cap_applies() -> None:
    cache = ReplayCache(max_entries=3)
    for _ in range(3):
        cache.check_and_add(_id(), NOW + 2, NOW)
    assert cache.check_and_add(_id(), NOW + 12, NOW + 3) is Admission.NEW
    assert len(cache) == 1


def test_a_long_idle_period_is_cheap() -> None:
    cache = ReplayCache()
    cache.check_and_add(_id(), NOW + 10, NOW)
    started = time.perf_counter()
    cache.check_and_add(_id(), NOW + 86_400 * 30 + 10, NOW + 86_400 * 30)  # 30 days later
    assert time.perf_counter() - started < 0.5
    assert len(cache) == 1


def test_memory_follows_rate_times_deadline() -> None:
    """A simulated hour at 1,000 requests/s with 10 s deadlines stays near 10,000 ids."""
    cache = ReplayCache(max_entries=50_000)
    peak = 0
    started = time.perf_counter()
    for step in range(360_000):  # 1 ms apart: 6 minutes of traffic
        now = NOW + step / 1000
        assert cache.check_and_add(f"r{step}", now + 10, now) is Admission.NEW
        peak = max(peak, len(cache))
    elapsed = time.perf_counter() - started
    assert 10_000 <= peak <= 11_100
    assert elapsed < 5, f"{elapsed:.2f} s: check_and_add is not O(1)"


def test_max_entries_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        ReplayCache(max_entries=0)
