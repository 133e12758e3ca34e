"""Tenant leases: at most one holder per (tenant, purpose), freed by time if the holder dies.

A lease is a row of ``leases`` (migration 012). ``acquire`` takes it with one upsert
that succeeds only when the row is absent, expired, or already held by the same holder
(who then extends it); otherwise it tells the caller how long the current holder may
still keep it. ``release`` deletes the row if it is still the holder's. Both run in the
caller's transaction, so a refused or failed operation leaves the lease as it was.

Purposes: ``renewal`` (ca.renewal, one agent of a tenant renewing at a time); the
updater's rollouts are meant to take ``rollout`` leases the same way.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import asyncpg

RENEWAL = "renewal"


@dataclass(frozen=True, slots=True)
class Held:
    """The lease is someone else's until ``expires_at``."""

    holder: str
    expires_at: dt.datetime

    def retry_after_s(self, now: dt.datetime) -> int:
        """Whole seconds until the lease expires, at least 1."""
        return max(1, math.ceil((self.expires_at - now).total_seconds()))


async def acquire(
    conn: asyncpg.Connection,
    tenant_id: str,
    purpose: str,
    *,
    holder: str,
    ttl_s: float,
    now: dt.datetime,
) -> Held | None:
    """Take or extend the lease; None when taken, else who holds it and until when."""
    expires_at = now + dt.timedelta(seconds=ttl_s)
    taken = await conn.fetchval(
        """INSERT INTO leases (tenant_id, purpose, holder, acquired_at, expires_at)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (tenant_id, purpose) DO UPDATE
               SET holder = EXCLUDED.holder, acquired_at = EXCLUDED.acquired_at,
                   expires_at = EXCLUDED.expires_at
               WHERE leases.expires_at <= EXCLUDED.acquired_at
                  OR leases.holder = EXCLUDED.holder
           RETURNING true""",
        tenant_id,
        purpose,
        holder,
        now,
        expires_at,
    )
    if taken:
        return None
    row = await conn.fetchrow(
        "SELECT holder, expires_at FROM leases WHERE tenant_id = $1 AND purpose = $2",
        tenant_id,
        purpose,
    )
    if row is None:  # released between the two statements: the caller may simply retry
        return Held(holder="", expires_at=now)
    return Held(holder=row["holder"], expires_at=row["expires_at"])


async def release(conn: asyncpg.Connection, tenant_id: str, purpose: str, *, holder: str) -> bool:
    """Free the lease if ``holder`` still holds it; True when a row was deleted."""
    status = await conn.execute(
        "DELETE FROM leases WHERE tenant_id = $1 AND purpose = $2 AND holder = $3",
        tenant_id,
        purpose,
        holder,
    )
    return bool(status == "DELETE 1")


async def current(
    conn: asyncpg.Connection, tenant_id: str, purpose: str, *, now: dt.datetime
) -> Held | None:
    """The lease's holder if it is held and not expired at ``now``."""
    row = await conn.fetchrow(
        """SELECT holder, expires_at FROM leases
           WHERE tenant_id = $1 AND purpose = $2 AND expires_at > $3""",
        tenant_id,
        purpose,
        now,
    )
    return Held(holder=row["holder"], expires_at=row["expires_at"]) if row else None
