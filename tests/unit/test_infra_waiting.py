"""infra.waiting: poll until ready or the deadline, keeping the last reason."""

from __future__ import annotations

import time

from infra.waiting import wait_until, wait_until_blocking


async def test_returns_empty_once_ready() -> None:
    answers = iter(["starting", "starting", ""])

    async def check() -> str:
        return next(answers)

    assert await wait_until(check, timeout_s=5, interval_s=0.001) == ""


async def test_returns_the_last_reason_at_the_deadline_and_checks_at_least_once() -> None:
    calls = 0

    async def check() -> str:
        nonlocal calls
        calls += 1
        return f"not yet {calls}"

    started = time.monotonic()
    assert await wait_until(check, timeout_s=0.0, interval_s=1) == "not yet 1"
    last = await wait_until(check, timeout_s=0.2, interval_s=0.01, max_interval_s=0.05)
    assert last == f"not yet {calls}" and calls > 3
    assert time.monotonic() - started < 2  # the last sleep never passes the deadline


def test_blocking_variant() -> None:
    answers = iter(["no", ""])
    assert wait_until_blocking(lambda: next(answers), timeout_s=5, interval_s=0.001) == ""
    assert wait_until_blocking(lambda: "down", timeout_s=0.05, interval_s=0.01) == "down"
