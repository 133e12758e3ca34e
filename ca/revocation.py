"""Revocation: deleting an agent, and the CRLs of both CAs (docs/design.md §3.4).

``DELETE /agents/{id}`` (bearer admin): in one transaction with the agent row locked,
record the certificate's serial in ``revocations``, delete the agent's broker user, delete
the row. If the broker cannot be reached the transaction rolls back (503, nothing
changed; the admin retries); if the commit failed after the broker user went, the agent
is still registered and gets a new user at its next bootstrap. An agent of another
tenant, or an id that is not a UUID, is answered exactly like a missing one (404
``agent_not_found``): other tenants' agents are never revealed.

CRLs: ``GET /pta.crl`` (agent certificates, signed by the PTA CA) and ``GET /service.crl``
(the service TLS CA's, signed by it) are DER ``application/pkix-crl`` (RFC 2585 section
4.2) on a separate plain-HTTP listener: a CRL is signed, so it needs no TLS, and clients
checking revocation must not need TLS to the CA to do it. Each CRL is built from
``revocations`` at most every ``crl_cache_s`` seconds per replica; a delete drops this
replica's cached PTA CRL at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import asyncpg
import structlog
from aiohttp import web

from ca import queries
from ca.authority import Authority, serial_int
from ca.broker_admin import BrokerAdmin
from ca.errors import AgentNotFound
from ca.mtls import PTA_ISSUER
from ca.resources import BROKER, CLOCK, POOL, VERIFIER, Clock
from common import pki
from common.contracts import agent_broker_user
from common.encoding import is_canonical_uuid

log = structlog.get_logger("ca.revocation")

SERVICE_ISSUER = "service"
CRL_CONTENT_TYPE = "application/pkix-crl"


class RetiringAgent(Protocol):
    """What ending an agent needs to know of it (an agents row, or an expired one)."""

    @property
    def id(self) -> str: ...
    @property
    def tenant_id(self) -> str: ...
    @property
    def cert_serial(self) -> str: ...


async def retire_agent(
    conn: asyncpg.Connection,
    broker: BrokerAdmin,
    agent: RetiringAgent,
    *,
    reason: str,
    now: dt.datetime,
) -> None:
    """End an agent for good, inside the caller's transaction: its serial on the PTA CRL
    with ``reason``, its broker user deleted (a live connection is closed), its row
    deleted. The one way an agent leaves: an admin's delete, expiry, inactivity, a clone.

    Raises BrokerUnavailable (the transaction then rolls back; deleting the broker user
    again later is harmless).
    """
    await queries.insert_revocation(
        conn,
        issuer=PTA_ISSUER,
        serial=agent.cert_serial,
        tenant_id=agent.tenant_id,
        agent_id=agent.id,
        reason=reason,
        now=now,
    )
    await broker.delete_user(agent_broker_user(agent.id))
    await queries.delete_agent(conn, agent.tenant_id, agent.id)


async def delete_agent(request: web.Request) -> web.Response:
    """Revoke an agent's certificate, delete its broker user and the agent (204)."""
    admin = await request.app[VERIFIER].verify(request.headers.get("Authorization"))
    structlog.contextvars.bind_contextvars(tenant_id=admin.tenant_id)
    agent_id = request.match_info["agent_id"]
    if not is_canonical_uuid(agent_id):
        raise AgentNotFound()
    now = request.app[CLOCK]()
    async with request.app[POOL].acquire() as conn, conn.transaction():
        agent = await queries.get_agent(conn, admin.tenant_id, agent_id, lock=True)
        if agent is None:
            raise AgentNotFound()
        await retire_agent(conn, request.app[BROKER], agent, reason="agent_deleted", now=now)
    request.app[CRLS].invalidate(PTA_ISSUER)
    log.info("agent_deleted", agent_id=agent.id, serial=agent.cert_serial, admin=admin.object_id)
    return web.Response(status=204)


@dataclass(slots=True)
class _Cached:
    der: bytes
    built_at: float


@dataclass(slots=True)
class CrlCache:
    """Signed CRLs per issuer, rebuilt from the database when older than ``max_age_s``."""

    authority: Authority
    max_age_s: float
    next_update_hours: int
    clock: Clock
    monotonic: Callable[[], float] = time.monotonic
    _cached: dict[str, _Cached] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def invalidate(self, issuer: str) -> None:
        self._cached.pop(issuer, None)

    async def der(self, issuer: str, pool: asyncpg.Pool) -> bytes:
        """The DER CRL of ``issuer`` (``pta`` or ``service``)."""
        cached = self._cached.get(issuer)
        if cached is not None and self.monotonic() - cached.built_at < self.max_age_s:
            return cached.der
        async with self._lock:
            cached = self._cached.get(issuer)
            if cached is not None and self.monotonic() - cached.built_at < self.max_age_s:
                return cached.der
            async with pool.acquire() as conn:
                revoked = await queries.revoked_serials(conn, issuer)
            if issuer == PTA_ISSUER:
                cert, key = self.authority.pta_cert, self.authority.pta_key
            else:
                cert, key = self.authority.service_cert, self.authority.service_key
            now = self.clock()
            crl = pki.build_crl(
                cert,
                key,
                [(serial_int(serial), at) for serial, at in revoked],
                now=now,
                next_update_hours=self.next_update_hours,
                # Milliseconds, not pki's default seconds: a delete followed by a rebuild
                # in the same second must still get a greater number (RFC 5280 5.2.3).
                crl_number=int(now.timestamp() * 1000),
            )
            der = pki.crl_der(crl)
            self._cached[issuer] = _Cached(der, self.monotonic())
            return der


CRLS = web.AppKey("crls", CrlCache)
MAIN_APP = web.AppKey("main_app", web.Application)
"""The CRL listener's app serves from the main app's pool and cache (``ca.app``)."""


async def pta_crl(request: web.Request) -> web.Response:
    """The PTA CA's CRL (revoked agent certificates)."""
    return await _crl(request, PTA_ISSUER)


async def service_crl(request: web.Request) -> web.Response:
    """The service TLS CA's CRL."""
    return await _crl(request, SERVICE_ISSUER)


async def _crl(request: web.Request, issuer: str) -> web.Response:
    main = request.app[MAIN_APP]
    der = await main[CRLS].der(issuer, main[POOL])
    return web.Response(
        body=der,
        content_type=CRL_CONTENT_TYPE,
        headers={"Cache-Control": f"public, max-age={int(main[CRLS].max_age_s)}"},
    )
