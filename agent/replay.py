"""The agent's replay cache: request ids it has taken, remembered until their deadline.

docs/design.md §7: the agent refuses a replayed request, i.e. a request id seen
before within its deadline. ``common.envelope.check_fresh`` refuses anything past its
deadline or with a deadline more than ``MAX_LIFETIME_S + MAX_CLOCK_SKEW_S`` ahead, so an
id only needs remembering until its ``expires_at``: after that the envelope is refused as
expired anyway.

Cost: ``check_and_add`` is O(1) amortised. Ids live in a dict (id -> expires_at) and in a
timing wheel of one-second buckets keyed by ``ceil(expires_at)``; each call first drops
the buckets whose second has passed (expired entries are always evicted first), so memory
follows the request rate times the deadline (3,000 requests/s with 10 s deadlines: 30,000
ids, a few MB).

Cap: at most ``max_entries`` live ids. When the cache is full of ids that have not
expired yet, ``check_and_add`` answers ``Admission.FULL`` and remembers nothing: the caller
refuses the request (fail closed) rather than forgetting a live id, which would reopen
the replay window for it. Size the cap above the peak rate times the longest deadline.

Not thread-safe: one event loop owns it (the consumer), and no call awaits.
"""

from __future__ import annotations

import enum
import math
from typing import Final

__all__ = ["DEFAULT_MAX_ENTRIES", "Admission", "ReplayCache"]

# 200,000 ids: 20,000 requests/s with 10 s deadlines; ~40 MB at worst.
DEFAULT_MAX_ENTRIES: Final = 200_000


class Admission(enum.Enum):
    """What ``check_and_add`` decided about one request id."""

    NEW = "new"  # first sight: remembered until its deadline; handle the request
    REPLAYED = "replayed"  # seen before and not yet expired: drop the request
    FULL = "full"  # the cache is full of live ids: refuse the request, nothing remembered


class ReplayCache:
    """Request ids seen, each until its ``expires_at`` (Unix seconds)."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._expiry: dict[str, float] = {}
        self._buckets: dict[int, list[str]] = {}
        self._next_second: int | None = None  # first bucket not yet swept

    def __len__(self) -> int:
        return len(self._expiry)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._expiry

    def check_and_add(self, request_id: str, expires_at: float, now: float) -> Admission:
        """Remember ``request_id`` until ``expires_at`` unless it is already remembered.

        ``now`` is the caller's clock (no clock reads here, for tests). An id whose
        remembered deadline has passed counts as new. Returns an ``Admission``.
        """
        self.evict(now)
        known = self._expiry.get(request_id)
        if known is not None and known > now:
            return Admission.REPLAYED
        if known is None and len(self._expiry) >= self.max_entries:
            return Admission.FULL
        self._expiry[request_id] = expires_at
        second = math.ceil(expires_at)
        if self._next_second is None:
            self._next_second = math.floor(now) + 1
        # A deadline already in a swept second goes in the next bucket to sweep.
        second = max(second, self._next_second)
        self._buckets.setdefault(second, []).append(request_id)
        return Admission.NEW

    def evict(self, now: float) -> int:
        """Forget every id whose deadline is at or before ``now``; return how many."""
        if self._next_second is None:
            return 0
        limit = math.floor(now)
        if not self._buckets:
            self._next_second = max(self._next_second, limit + 1)
            return 0
        removed = 0
        # One step per elapsed second (bounded by how long the agent was idle, and
        # skipped entirely when nothing is stored).
        while self._next_second <= limit and self._buckets:
            for request_id in self._buckets.pop(self._next_second, ()):
                expiry = self._expiry.get(request_id)
                # Re-added ids carry a later deadline in a later bucket: keep those.
                if expiry is not None and expiry <= now:
                    del self._expiry[request_id]
                    removed += 1
            self._next_second += 1
        self._next_second = max(self._next_second, limit + 1)
        return removed
