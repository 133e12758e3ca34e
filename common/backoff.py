"""Exponential backoff with jitter, for every loop that retries a connection or a call.

The delay after failed attempt `attempt` (0-based) is `min(max_s, first_s * 2**attempt)`
times a random fraction in [`MIN_FRACTION`, 1]: jitter, so that many processes that lost
the same server at the same moment (STS replicas, a tenant's agents) do not all come back
in step. The fraction is bounded below ("equal jitter" rather than full jitter from 0) so a
retry is never a tight loop and the cap still means "about this long".

`backoff_delay` is the pure function; `Backoff` counts the attempts of one loop.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Final

MIN_FRACTION: Final = 0.5

_random = secrets.SystemRandom()


def backoff_delay(attempt: int, *, first_s: float, max_s: float) -> float:
    """Seconds to wait after failed attempt `attempt` (0-based), jittered."""
    ceiling = min(max_s, first_s * 2.0 ** min(attempt, 64))
    return ceiling * _random.uniform(MIN_FRACTION, 1.0)


@dataclass(slots=True)
class Backoff:
    """The attempts of one retry loop: `next()` after a failure, `reset()` after success."""

    first_s: float
    max_s: float
    attempt: int = 0

    def next(self) -> float:
        """The delay before the next try; counts this failure."""
        delay = backoff_delay(self.attempt, first_s=self.first_s, max_s=self.max_s)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
