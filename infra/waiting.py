"""One poll loop for the launcher: ask until ready or the deadline passes.

A check returns "" when what it waits for is ready, else a short text saying what is not
(kept for the error message); it catches what it expects to fail while a server starts.
The delay between checks starts at `interval_s` and doubles up to `max_interval_s` (equal
to `interval_s` by default: a fixed pace); the last sleep never passes the deadline, and
the check runs at least once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def wait_until(
    check: Callable[[], Awaitable[str]],
    *,
    timeout_s: float,
    interval_s: float = 0.2,
    max_interval_s: float | None = None,
) -> str:
    """ "" once `check` answers "", else what it last answered when `timeout_s` ran out."""
    deadline = time.monotonic() + timeout_s
    delay = interval_s
    while True:
        last = await check()
        remaining = deadline - time.monotonic()
        if not last or remaining <= 0:
            return last
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 2, max_interval_s or interval_s)


def wait_until_blocking(
    check: Callable[[], str], *, timeout_s: float, interval_s: float = 0.05
) -> str:
    """`wait_until` for code that is not async (the supervisor's start)."""
    deadline = time.monotonic() + timeout_s
    while True:
        last = check()
        remaining = deadline - time.monotonic()
        if not last or remaining <= 0:
            return last
        time.sleep(min(interval_s, remaining))
