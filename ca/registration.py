"""``POST /agents/register``: a tenant admin enrols an agent (docs/design.md §3.1).

Order of checks, each failing before anything is stored:
1. the bearer token (``ca.admin_tokens``): 401 ``invalid_token``, 403 ``insufficient_role``;
2. the body (``ca.bodies``): 400 ``invalid_request``, 413 when larger than 64 KiB;
3. ``tenant_id``, when given, must be the token's ``tid``: 403 ``tenant_mismatch`` (a
   token of tenant A registers nothing in tenant B);
4. the CSR (``common.pki.validate_csr``: one PEM CSR <= 8 KiB, self-signed, RSA 2048 to
   4096, no extensions): 400 ``csr_rejected``;
5. in one transaction under a per-tenant lock: the tenant exists (else 401
   ``invalid_token``), it has fewer than ``max_agents_per_tenant`` agents (409
   ``agent_limit_reached``), the tenant queue is declared (idempotent; 503
   ``broker_unavailable``), the key is new (400 ``csr_rejected``), the row is inserted.
The certificate is signed before the transaction (it is CPU work; the lock stays short)
and is only returned if the row commits.
"""

from __future__ import annotations

import uuid

import asyncpg
import structlog
from aiohttp import web

from ca import queries
from ca.bodies import RegisterAnswer, RegisterRequest, decode, json_response
from ca.errors import AgentLimitReached, CsrRejected, InvalidToken, TenantMismatch
from ca.resources import AUTHORITY, BROKER, CLOCK, POOL, SETTINGS, VERIFIER
from common import pki

log = structlog.get_logger("ca.registration")


async def register(request: web.Request) -> web.Response:
    """Register an agent and return its certificate (docs/architecture.md)."""
    settings = request.app[SETTINGS]
    admin = await request.app[VERIFIER].verify(request.headers.get("Authorization"))
    structlog.contextvars.bind_contextvars(tenant_id=admin.tenant_id)
    body = decode(await request.read(), RegisterRequest)
    if body.tenant_id is not None and body.tenant_id != admin.tenant_id:
        raise TenantMismatch()
    try:
        csr = pki.validate_csr(body.csr.encode("utf-8"))
    except pki.CsrRejected as exc:
        raise CsrRejected(str(exc)) from exc

    agent_id = str(uuid.uuid4())
    now = request.app[CLOCK]()
    issued = request.app[AUTHORITY].issue_agent_certificate(
        csr,
        tenant_id=admin.tenant_id,
        agent_id=agent_id,
        now=now,
        lifetime_days=settings.agent_cert_lifetime_days,
        crl_url=settings.pta_crl_url,
    )
    async with request.app[POOL].acquire() as conn, conn.transaction():
        if not await queries.lock_tenant_agents(conn, admin.tenant_id):
            raise InvalidToken("The token's tenant is not known to this CA.")
        count = await queries.count_agents(conn, admin.tenant_id)
        if count >= settings.max_agents_per_tenant:
            raise AgentLimitReached(
                f"The tenant already has {count} registered agents, the maximum is "
                f"{settings.max_agents_per_tenant}; delete an unused agent "
                f"(DELETE /agents/{{id}}) before registering another."
            )
        # Under the tenant lock, so a refused registration touches nothing; the call has
        # a timeout, and the lock only holds back this tenant's other registrations.
        await request.app[BROKER].ensure_tenant(admin.tenant_id)
        try:
            await queries.insert_agent(
                conn,
                queries.NewAgent(
                    id=agent_id,
                    tenant_id=admin.tenant_id,
                    host=body.host,
                    version=body.version,
                    spki=issued.spki,
                    kid=issued.kid,
                    cert_serial=issued.serial,
                    cert_not_after=issued.not_after,
                ),
            )
        except asyncpg.UniqueViolationError as exc:
            raise CsrRejected(
                "This key is already registered to an agent; generate a new key pair."
            ) from exc

    log.info(
        "agent_registered",
        agent_id=agent_id,
        host=body.host,
        version=body.version,
        serial=issued.serial,
        kid=issued.kid,
        admin=admin.object_id,
    )
    answer = RegisterAnswer(
        agent_id=agent_id,
        tenant_id=admin.tenant_id,
        certificate=issued.pem,
        ca_certificate=request.app[AUTHORITY].pta_cert_pem,
        not_after=issued.not_after,
        kid=issued.kid,
    )
    return json_response(answer, status=201)
