"""Per-tenant consumer counts of the tenant queues: does any agent listen?

Part of the dispatcher (`sts.dispatcher`). Before publishing, the tenant queue's consumer
count tells whether any agent listens: no consumer answers AADSTS80001 at once instead of
after the deadline. The count is cached per tenant and re-read from the broker (a passive
queue declare on a separate plain channel of the tenant's link, `TenantLinks.probe`: a 404
closes that channel, never the one with pending requests) in the background at most every
`consumer_check_interval_s`; it is read in line only the first time, when it is older than
`MAX_COUNT_AGE_S`, or when it was 0 and is stale (a tenant with no agent is failing anyway).
A missing tenant queue counts 0: the CA declares it (with the vhost) when the tenant's first
agent registers; the STS may not.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Final

from cachetools import LRUCache

MAX_COUNT_AGE_S: Final = 30.0
"""A consumer count older than this is re-read in line, not trusted."""

_MAX_COUNT_ENTRIES: Final = 100_000


class ConsumerCounts:
    """Per-tenant consumer counts of the tenant queues, refreshed in the background.

    `probe(tenant_id)` asks the broker and returns the count, or None when it could not.
    """

    def __init__(
        self,
        probe: Callable[[str], Awaitable[int | None]],
        *,
        interval_s: float,
        max_age_s: float = MAX_COUNT_AGE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._probe = probe
        self._interval_s = interval_s
        self._max_age_s = max_age_s
        self._clock = clock
        # Least recently used tenants are forgotten first (re-read on their next sign-in).
        self._entries: LRUCache[str, tuple[float, int]] = LRUCache(_MAX_COUNT_ENTRIES)
        self._wanted: set[str] = set()
        self._wake = asyncio.Event()
        self.probes = 0

    async def get(self, tenant_id: str) -> int | None:
        """The tenant queue's consumer count; None when unknown (then publish anyway)."""
        entry = self._entries.get(tenant_id)
        now = self._clock()
        if entry is None or now - entry[0] > self._max_age_s:
            return await self.refresh(tenant_id)
        age = now - entry[0]
        if age >= self._interval_s:
            if entry[1] == 0:
                return await self.refresh(tenant_id)
            self.refresh_soon(tenant_id)
        return entry[1]

    def refresh_soon(self, tenant_id: str) -> None:
        """Ask the background task to re-read this tenant's count."""
        self._wanted.add(tenant_id)
        self._wake.set()

    def forget(self, tenant_id: str) -> None:
        self._entries.pop(tenant_id, None)

    async def refresh(self, tenant_id: str) -> int | None:
        self.probes += 1
        count = await self._probe(tenant_id)
        if count is None:
            self._entries.pop(tenant_id, None)
        else:
            self._entries[tenant_id] = (self._clock(), count)
        return count

    async def run(self) -> None:
        """Refresh the counts asked for, until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            wanted, self._wanted = self._wanted, set()
            for tenant_id in wanted:
                entry = self._entries.get(tenant_id)
                if entry is None or self._clock() - entry[0] >= self._interval_s:
                    await self.refresh(tenant_id)
