"""common.backoff: doubling up to a cap, jittered within [ceiling/2, ceiling]."""

from __future__ import annotations

from common.backoff import MIN_FRACTION, Backoff, backoff_delay


def test_delay_doubles_up_to_the_cap_with_bounded_jitter() -> None:
    for attempt, ceiling in [(0, 0.5), (1, 1.0), (3, 4.0), (6, 30.0), (10_000, 30.0)]:
        delays = [backoff_delay(attempt, first_s=0.5, max_s=30.0) for _ in range(200)]
        assert all(ceiling * MIN_FRACTION <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered: replicas do not retry in step


def test_backoff_counts_failures_and_resets() -> None:
    backoff = Backoff(1.0, 8.0)
    delays = [backoff.next() for _ in range(5)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, [1, 2, 4, 8, 8], strict=True))
    backoff.reset()
    assert 0.5 <= backoff.next() <= 1.0
