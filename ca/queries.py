"""Every SQL statement of the CA, in one place (docs/contributing.md §1).

Tables ``tenants``, ``agents`` and ``revocations`` come from
``common/migrations/001_tenants_and_agents.sql`` (``003_ca.sql`` adds two agent columns).
Every agent query is scoped by tenant where the caller knows the tenant (security rule:
tenant isolation at each layer). Functions take an asyncpg connection so that callers
choose the transaction; none of them commits.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import asyncpg

# The columns of AgentRecord, spelled out in each statement (no SQL built from strings).
_GET_AGENT = """
    SELECT id::text AS id, tenant_id::text AS tenant_id, host, version, kid, cert_serial,
           cert_not_after, registered_at, last_heartbeat_at, last_bootstrap_at,
           reported_status, status_detail, broker_user, suspected_clone_at
    FROM agents WHERE id = $1 AND tenant_id = $2"""
_GET_AGENT_FOR_UPDATE = """
    SELECT id::text AS id, tenant_id::text AS tenant_id, host, version, kid, cert_serial,
           cert_not_after, registered_at, last_heartbeat_at, last_bootstrap_at,
           reported_status, status_detail, broker_user, suspected_clone_at
    FROM agents WHERE id = $1 AND tenant_id = $2 FOR UPDATE"""
_LIST_AGENTS = """
    SELECT id::text AS id, tenant_id::text AS tenant_id, host, version, kid, cert_serial,
           cert_not_after, registered_at, last_heartbeat_at, last_bootstrap_at,
           reported_status, status_detail, broker_user, suspected_clone_at
    FROM agents WHERE tenant_id = $1 ORDER BY registered_at, id"""


@dataclass(frozen=True, slots=True)
class AgentRecord:
    """One row of ``agents`` (without the SPKI, which only the STS needs)."""

    id: str
    tenant_id: str
    host: str
    version: str
    kid: str
    cert_serial: str
    cert_not_after: dt.datetime
    registered_at: dt.datetime
    last_heartbeat_at: dt.datetime | None
    last_bootstrap_at: dt.datetime | None
    reported_status: str
    status_detail: str
    broker_user: str | None
    suspected_clone_at: dt.datetime | None = None

    @classmethod
    def from_row(cls, row: Any) -> AgentRecord:
        return cls(**dict(row))


@dataclass(frozen=True, slots=True)
class NewAgent:
    id: str
    tenant_id: str
    host: str
    version: str
    spki: bytes
    kid: str
    cert_serial: str
    cert_not_after: dt.datetime


# -- tenants and registration -----------------------------------------------------------


async def lock_tenant_agents(conn: asyncpg.Connection, tenant_id: str) -> bool:
    """Serialize agent registrations of one tenant until the transaction ends.

    A transaction-scoped advisory lock keyed by tenant, so concurrent registrations on
    any CA replica count and insert one after the other (the 40-agent limit holds) while
    nothing else that touches the tenant row waits. Returns whether the tenant exists.
    """
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('pta-ca-agents:' || $1::text, 0))",
        tenant_id,
    )
    exists = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM tenants WHERE id = $1)", tenant_id)
    return bool(exists)


async def tenant_exists(conn: asyncpg.Connection, tenant_id: str) -> bool:
    value = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM tenants WHERE id = $1)", tenant_id)
    return bool(value)


async def admin_roles(
    conn: asyncpg.Connection, tenant_id: str, admin_id: str
) -> tuple[str, ...] | None:
    """The roles the tenant's cloud-only admin holds now (``admins``, written by the STS
    seed and admin tooling), or None when no such admin exists in that tenant."""
    roles = await conn.fetchval(
        "SELECT roles FROM admins WHERE id = $1 AND tenant_id = $2", admin_id, tenant_id
    )
    return None if roles is None else tuple(roles)


class DatabaseAdmins:
    """``ca.admin_tokens.AdminDirectory`` over the CA's pool: tenants and admins as they
    are now, so a token outliving its admin or role is refused."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def tenant_exists(self, tenant_id: str) -> bool:
        async with self._pool.acquire() as conn:
            return await tenant_exists(conn, tenant_id)

    async def admin_roles(self, tenant_id: str, admin_id: str) -> tuple[str, ...] | None:
        async with self._pool.acquire() as conn:
            return await admin_roles(conn, tenant_id, admin_id)


async def count_agents(conn: asyncpg.Connection, tenant_id: str) -> int:
    value = await conn.fetchval("SELECT count(*) FROM agents WHERE tenant_id = $1", tenant_id)
    return int(value)


async def insert_agent(conn: asyncpg.Connection, agent: NewAgent) -> None:
    """Raises asyncpg.UniqueViolationError when the key id is already registered."""
    await conn.execute(
        """INSERT INTO agents (id, tenant_id, host, version, spki, kid, cert_serial,
                               cert_not_after)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
        agent.id,
        agent.tenant_id,
        agent.host,
        agent.version,
        agent.spki,
        agent.kid,
        agent.cert_serial,
        agent.cert_not_after,
    )


# -- agents --------------------------------------------------------------------------------


async def get_agent(
    conn: asyncpg.Connection, tenant_id: str, agent_id: str, *, lock: bool = False
) -> AgentRecord | None:
    """The tenant's agent, or None; ``lock`` holds the row until the transaction ends
    (bootstrap and delete take it, so they cannot interleave)."""
    statement = _GET_AGENT_FOR_UPDATE if lock else _GET_AGENT
    row = await conn.fetchrow(statement, agent_id, tenant_id)
    return AgentRecord.from_row(row) if row is not None else None


async def is_revoked(conn: asyncpg.Connection, issuer: str, serial: str) -> bool:
    value = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM revocations WHERE issuer = $1 AND serial = $2)",
        issuer,
        serial,
    )
    return bool(value)


async def record_bootstrap(
    conn: asyncpg.Connection, agent_id: str, broker_user: str, now: dt.datetime
) -> None:
    await conn.execute(
        "UPDATE agents SET broker_user = $2, last_bootstrap_at = $3 WHERE id = $1",
        agent_id,
        broker_user,
        now,
    )


async def record_heartbeat(
    conn: asyncpg.Connection,
    agent_id: str,
    *,
    version: str,
    reported_status: str,
    detail: str,
    now: dt.datetime,
) -> None:
    await conn.execute(
        """UPDATE agents SET last_heartbeat_at = $2, version = $3, reported_status = $4,
                             status_detail = $5
           WHERE id = $1""",
        agent_id,
        now,
        version,
        reported_status,
        detail,
    )


# -- agents seen by their tenant's admins -------------------------------------------------


async def list_agents(conn: asyncpg.Connection, tenant_id: str) -> list[AgentRecord]:
    rows = await conn.fetch(_LIST_AGENTS, tenant_id)
    return [AgentRecord.from_row(row) for row in rows]


async def delete_agent(conn: asyncpg.Connection, tenant_id: str, agent_id: str) -> None:
    await conn.execute("DELETE FROM agents WHERE id = $1 AND tenant_id = $2", agent_id, tenant_id)


# -- revocations ----------------------------------------------------------------------------


async def insert_revocation(
    conn: asyncpg.Connection,
    *,
    issuer: str,
    serial: str,
    tenant_id: str | None,
    agent_id: str | None,
    reason: str,
    now: dt.datetime,
) -> None:
    """Record a revoked certificate; revoking twice keeps the first record."""
    await conn.execute(
        """INSERT INTO revocations (serial, issuer, tenant_id, agent_id, revoked_at, reason)
           VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (issuer, serial) DO NOTHING""",
        serial,
        issuer,
        tenant_id,
        agent_id,
        now,
        reason,
    )


async def revoked_serials(conn: asyncpg.Connection, issuer: str) -> list[tuple[str, dt.datetime]]:
    """Every revoked serial of one CA with its revocation time, for the CRL."""
    rows = await conn.fetch(
        "SELECT serial, revoked_at FROM revocations WHERE issuer = $1 ORDER BY serial", issuer
    )
    return [(row["serial"], row["revoked_at"]) for row in rows]


# -- users synced from the directory (ca.sync; tables from 004_users.sql, 007_user_sync.sql)


@dataclass(frozen=True, slots=True)
class UserSync:
    """One sync run (``user_syncs``) as the batch handler needs it."""

    started_at: dt.datetime
    is_finished: bool


async def lock_tenant_users(conn: asyncpg.Connection, tenant_id: str) -> None:
    """Serialize the sync batches of one tenant until the transaction ends (any replica):
    two agents syncing at once then never race on the unique usernames."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('pta-ca-users:' || $1::text, 0))",
        tenant_id,
    )


async def verified_domains(conn: asyncpg.Connection, tenant_id: str) -> set[str]:
    rows = await conn.fetch(
        "SELECT name FROM domains WHERE tenant_id = $1 AND is_verified", tenant_id
    )
    return {row["name"] for row in rows}


async def open_user_sync(
    conn: asyncpg.Connection, sync_id: str, tenant_id: str, agent_id: str
) -> UserSync | None:
    """The run ``sync_id`` of this agent, recorded now (database clock) at its first batch.

    None when the id belongs to another agent or tenant (the caller refuses the batch).
    """
    row = await conn.fetchrow(
        """INSERT INTO user_syncs (sync_id, tenant_id, agent_id, started_at)
           VALUES ($1, $2, $3, now())
           ON CONFLICT (sync_id) DO NOTHING
           RETURNING started_at, finished_at""",
        sync_id,
        tenant_id,
        agent_id,
    )
    if row is None:
        row = await conn.fetchrow(
            """SELECT started_at, finished_at FROM user_syncs
               WHERE sync_id = $1 AND tenant_id = $2 AND agent_id = $3""",
            sync_id,
            tenant_id,
            agent_id,
        )
    if row is None:
        return None
    return UserSync(started_at=row["started_at"], is_finished=row["finished_at"] is not None)


async def upsert_users(
    conn: asyncpg.Connection,
    *,
    tenant_id: str,
    agent_id: str,
    sync_id: str,
    ids: list[str],
    usernames: list[str],
    immutable_ids: list[str],
    display_names: list[str],
) -> tuple[int, int]:
    """Write one batch; returns (created, updated).

    A user is its ``(tenant_id, immutable_id)``: an existing one keeps its ``id`` (the
    oid) and takes the new username and display name (a rename); a new one gets the
    ``id`` given for it. Another row holding a username of the batch under a different
    immutable id is first moved aside to ``<its id>@displaced.invalid`` (RFC 2606: never a
    real domain), so swaps and re-created users never collide on the unique username;
    such a row is renamed later in the run or deleted when the run ends.
    """
    await conn.execute(
        """UPDATE users AS u SET username = u.id::text || '@displaced.invalid'
           FROM unnest($2::text[], $3::text[]) AS b(username, immutable_id)
           WHERE u.tenant_id = $1 AND u.username = b.username
             AND u.immutable_id <> b.immutable_id""",
        tenant_id,
        usernames,
        immutable_ids,
    )
    rows = await conn.fetch(
        """INSERT INTO users AS u (id, tenant_id, username, immutable_id, display_name,
                                   synced_by, synced_at, last_sync_id)
           SELECT b.id, $1, b.username, b.immutable_id, b.display_name, $2, now(), $3
           FROM unnest($4::uuid[], $5::text[], $6::text[], $7::text[])
                AS b(id, username, immutable_id, display_name)
           ON CONFLICT (tenant_id, immutable_id) DO UPDATE
           SET username = EXCLUDED.username, display_name = EXCLUDED.display_name,
               synced_by = EXCLUDED.synced_by, synced_at = EXCLUDED.synced_at,
               last_sync_id = EXCLUDED.last_sync_id
           RETURNING (xmax = 0) AS created""",
        tenant_id,
        agent_id,
        sync_id,
        ids,
        usernames,
        immutable_ids,
        display_names,
    )
    created = sum(1 for row in rows if row["created"])
    await conn.execute(
        "UPDATE user_syncs SET upserted = upserted + $3 WHERE sync_id = $1 AND tenant_id = $2",
        sync_id,
        tenant_id,
        len(rows),
    )
    return created, len(rows) - created


async def finish_user_sync(
    conn: asyncpg.Connection, *, tenant_id: str, sync_id: str, started_at: dt.datetime
) -> int:
    """End a run: delete the tenant's users it did not send; returns how many.

    Only rows last written before the run started are candidates, so a run never deletes
    what another agent's concurrent run wrote meanwhile. Runs older than a week that never
    finished (an agent stopped mid-sync) are forgotten here too.
    """
    deleted = await conn.fetch(
        """DELETE FROM users
           WHERE tenant_id = $1 AND last_sync_id IS DISTINCT FROM $2 AND synced_at < $3
           RETURNING id""",
        tenant_id,
        sync_id,
        started_at,
    )
    await conn.execute(
        """UPDATE user_syncs SET finished_at = now(), deleted = $3
           WHERE sync_id = $1 AND tenant_id = $2""",
        sync_id,
        tenant_id,
        len(deleted),
    )
    await conn.execute(
        """DELETE FROM user_syncs
           WHERE tenant_id = $1 AND finished_at IS NULL
             AND started_at < now() - interval '7 days'""",
        tenant_id,
    )
    return len(deleted)


# -- certificate renewal and expiry (ca.renewal; tables from 012_renewal.sql) --------------


@dataclass(frozen=True, slots=True)
class Renewal:
    """One row of ``agent_renewals``."""

    new_serial: str
    tenant_id: str
    agent_id: str
    old_serial: str
    old_kid: str
    new_kid: str
    new_certificate: str
    renewed_at: dt.datetime
    completed_at: dt.datetime | None


async def pending_renewal(
    conn: asyncpg.Connection, tenant_id: str, agent_id: str, old_serial: str
) -> Renewal | None:
    """The agent's unconfirmed renewal away from ``old_serial``, if any."""
    row = await conn.fetchrow(
        """SELECT new_serial, tenant_id::text AS tenant_id, agent_id::text AS agent_id,
                  old_serial, old_kid, new_kid, new_certificate, renewed_at, completed_at
           FROM agent_renewals
           WHERE tenant_id = $1 AND agent_id = $2 AND old_serial = $3
             AND completed_at IS NULL""",
        tenant_id,
        agent_id,
        old_serial,
    )
    return Renewal(**dict(row)) if row is not None else None


async def unconfirmed_renewals(conn: asyncpg.Connection, tenant_id: str) -> set[str]:
    """Ids of the tenant's agents with a renewal not yet confirmed by a bootstrap."""
    rows = await conn.fetch(
        """SELECT DISTINCT agent_id::text AS agent_id FROM agent_renewals
           WHERE tenant_id = $1 AND completed_at IS NULL""",
        tenant_id,
    )
    return {row["agent_id"] for row in rows}


async def key_was_used(conn: asyncpg.Connection, kid: str) -> bool:
    """True when ``kid`` is or was the key of any agent (current, or renewed away from)."""
    value = await conn.fetchval(
        """SELECT EXISTS (SELECT 1 FROM agents WHERE kid = $1)
               OR EXISTS (SELECT 1 FROM agent_renewals WHERE old_kid = $1 OR new_kid = $1)""",
        kid,
    )
    return bool(value)


async def replace_agent_key(
    conn: asyncpg.Connection,
    agent_id: str,
    *,
    spki: bytes,
    kid: str,
    cert_serial: str,
    cert_not_after: dt.datetime,
) -> None:
    """The agent's new key and certificate. The ``agents`` update trigger (005) notifies
    ``pta_agents`` on commit, so every STS replica reloads the tenant's keys."""
    await conn.execute(
        """UPDATE agents SET spki = $2, kid = $3, cert_serial = $4, cert_not_after = $5
           WHERE id = $1""",
        agent_id,
        spki,
        kid,
        cert_serial,
        cert_not_after,
    )


async def insert_renewal(conn: asyncpg.Connection, renewal: Renewal) -> None:
    await conn.execute(
        """INSERT INTO agent_renewals (new_serial, tenant_id, agent_id, old_serial, old_kid,
                                       new_kid, new_certificate, renewed_at, completed_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
        renewal.new_serial,
        renewal.tenant_id,
        renewal.agent_id,
        renewal.old_serial,
        renewal.old_kid,
        renewal.new_kid,
        renewal.new_certificate,
        renewal.renewed_at,
        renewal.completed_at,
    )


async def complete_renewal(
    conn: asyncpg.Connection, agent_id: str, new_serial: str, now: dt.datetime
) -> bool:
    """Mark the renewal to ``new_serial`` confirmed; True the first time only."""
    status = await conn.execute(
        """UPDATE agent_renewals SET completed_at = $3
           WHERE agent_id = $1 AND new_serial = $2 AND completed_at IS NULL""",
        agent_id,
        new_serial,
        now,
    )
    return bool(status == "UPDATE 1")


async def revocation_reason(conn: asyncpg.Connection, issuer: str, serial: str) -> str | None:
    """The reason ``serial`` was revoked, or None when it is not revoked."""
    value = await conn.fetchval(
        "SELECT reason FROM revocations WHERE issuer = $1 AND serial = $2", issuer, serial
    )
    return str(value) if value is not None else None


@dataclass(frozen=True, slots=True)
class ExpiredAgent:
    id: str
    tenant_id: str
    cert_serial: str
    cert_not_after: dt.datetime


async def lock_expired_agents(
    conn: asyncpg.Connection, now: dt.datetime, limit: int
) -> list[ExpiredAgent]:
    """Agents whose certificate expired by ``now``, locked (others' locked rows skipped)."""
    rows = await conn.fetch(
        """SELECT id::text AS id, tenant_id::text AS tenant_id, cert_serial, cert_not_after
           FROM agents WHERE cert_not_after <= $1
           ORDER BY cert_not_after LIMIT $2 FOR UPDATE SKIP LOCKED""",
        now,
        limit,
    )
    return [ExpiredAgent(**dict(row)) for row in rows]


# -- agent lifecycle (ca.lifecycle; columns from 013_lifecycle.sql) ---------------------------


async def lock_inactive_agents(
    conn: asyncpg.Connection, silent_since: dt.datetime, limit: int
) -> list[ExpiredAgent]:
    """Agents not heard from (heartbeat, else bootstrap, else registration) since
    ``silent_since``, locked (others' locked rows skipped)."""
    rows = await conn.fetch(
        """SELECT id::text AS id, tenant_id::text AS tenant_id, cert_serial, cert_not_after
           FROM agents
           WHERE coalesce(last_heartbeat_at, last_bootstrap_at, registered_at) <= $1
           ORDER BY coalesce(last_heartbeat_at, last_bootstrap_at, registered_at)
           LIMIT $2 FOR UPDATE SKIP LOCKED""",
        silent_since,
        limit,
    )
    return [ExpiredAgent(**dict(row)) for row in rows]


async def agent_instances(conn: asyncpg.Connection, agent_id: str) -> str:
    """The agent's ``instances`` JSON text (the caller holds the row lock)."""
    value = await conn.fetchval("SELECT instances::text FROM agents WHERE id = $1", agent_id)
    return str(value) if value is not None else "{}"


async def record_instances(
    conn: asyncpg.Connection, agent_id: str, instances_json: str, *, clone_at: dt.datetime | None
) -> None:
    """Store the agent's recent instances; ``clone_at`` marks it a suspected clone (kept
    from the first time)."""
    await conn.execute(
        """UPDATE agents SET instances = $2::jsonb,
                  suspected_clone_at = coalesce(suspected_clone_at, $3)
           WHERE id = $1""",
        agent_id,
        instances_json,
        clone_at,
    )


async def revokes_suspected_clones(conn: asyncpg.Connection, tenant_id: str) -> bool:
    value = await conn.fetchval(
        "SELECT revoke_suspected_clones FROM tenants WHERE id = $1", tenant_id
    )
    return bool(value)
