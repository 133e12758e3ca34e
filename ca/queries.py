"""Every SQL statement of the CA, in one place (STYLE.md section 1).

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
           reported_status, status_detail, broker_user
    FROM agents WHERE id = $1 AND tenant_id = $2"""
_GET_AGENT_FOR_UPDATE = """
    SELECT id::text AS id, tenant_id::text AS tenant_id, host, version, kid, cert_serial,
           cert_not_after, registered_at, last_heartbeat_at, last_bootstrap_at,
           reported_status, status_detail, broker_user
    FROM agents WHERE id = $1 AND tenant_id = $2 FOR UPDATE"""
_LIST_AGENTS = """
    SELECT id::text AS id, tenant_id::text AS tenant_id, host, version, kid, cert_serial,
           cert_not_after, registered_at, last_heartbeat_at, last_bootstrap_at,
           reported_status, status_detail, broker_user
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
