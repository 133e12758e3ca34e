"""Certificate renewal and expiry (docs/architecture.md "Certificate renewal").

``POST /agents/renew`` (mutual TLS with the agent's CURRENT certificate, no admin token),
body ``{"csr": PEM}`` for a NEW RSA-2048 key made on the agent's host:

1. the certificate is checked as for every mutual-TLS call (``ca.mtls``: our PTA CA, in
   its validity window, not revoked, not superseded, a registered agent of its tenant);
2. the CSR is vetted (``common.pki.validate_csr``: signed by the key it names, RSA, no
   extensions) and must be for an RSA key of exactly 2048 bits; its subject is ignored
   (the certificate names the tenant and agent of the current certificate);
3. a key this or any agent has ever had is refused (``renewal_replayed``): a key is
   usable for one certificate only, so a replayed renewal changes nothing;
4. the tenant's ``renewal`` lease (``ca.leases``) is taken for ``renewal_lease_s``; if
   another agent of the tenant holds it the answer is 409 ``renewal_in_progress`` with
   ``retry_after_s`` (and a ``Retry-After`` header): the lease's remaining time, at most
   ``renewal_retry_after_s``, since a renewal usually ends within seconds;
5. in ONE transaction with the agent row locked: the row gets the new SPKI, kid, serial
   and expiry (the update trigger of migration 005 notifies every STS replica, which
   reloads the tenant's keys), the old serial is revoked with reason ``superseded`` (on
   the CRL from then on, and refused as ``certificate_superseded``), and the renewal is
   recorded in ``agent_renewals`` with the new certificate.

The lease is released when the agent first bootstraps with its new certificate
(``complete``, called by ``ca.bootstrap``): the renewal is then done end to end (the new
key stored, new broker credentials taken). A renewal that dies frees the lease when it
expires.

A crash of the agent between the CA's commit and storing the certificate is recovered by
asking again with the OLD certificate and the SAME CSR: while that renewal is
unconfirmed, the CA answers with the certificate it issued (no second certificate, no
change). Once confirmed, the old certificate is only ``certificate_superseded``.

Expiry: ``sweep_expired`` deletes every agent whose certificate has expired, as an admin's
delete does (serial revoked with reason ``certificate_expired``, broker user deleted, row
deleted), so it no longer counts toward the tenant's limit; a later call with that
certificate (a CA whose clock lets it through the handshake) is told
``certificate_expired``: register again. ``ca.lifecycle.sweeper`` runs it (with the
inactive-agent sweep) every ``expiry_sweep_interval_s`` in each CA replica (``SKIP
LOCKED``: replicas share the work).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable

import asyncpg
import msgspec
import structlog
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from ca import leases, queries
from ca.authority import serial_hex
from ca.bodies import json_response
from ca.errors import (
    BrokerUnavailable,
    CsrRejected,
    InvalidRequest,
    RenewalInProgress,
    RenewalNotDue,
    RenewalReplayed,
)
from ca.mtls import EXPIRED, PTA_ISSUER, SUPERSEDED, certificate_identity, verified_agent
from ca.queries import AgentRecord
from ca.resources import AUTHORITY, BROKER, CLOCK, POOL, SETTINGS
from ca.revocation import CRLS, retire_agent
from common import pki

log = structlog.get_logger("ca.renewal")

RENEWAL_KEY_BITS = 2048
SWEEP_BATCH = 100


class RenewRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    csr: str


class RenewAnswer(msgspec.Struct, frozen=True):
    agent_id: str
    tenant_id: str
    certificate: str
    ca_certificate: str
    not_after: dt.datetime
    kid: str
    serial: str


class RenewalRefusal(msgspec.Struct, frozen=True):
    error: str
    message: str
    retry_after_s: int


async def renew(request: web.Request) -> web.Response:
    """Issue a new certificate for a new key of the calling agent (module docstring)."""
    try:
        return await _renew(request)
    except asyncpg.UniqueViolationError as exc:
        # Two agents sent the same new key at once: the check before the insert passed
        # for both, the unique kid refused the second. A replay, not a server fault.
        raise RenewalReplayed(detail="kid used by a concurrent renewal") from exc
    except RenewalInProgress as exc:
        # The one refusal with a field beyond {"error", "message"}: rendered here.
        log.warning("request_refused", error=exc.code, reason=exc.message, detail=exc.detail)
        body = RenewalRefusal(exc.code, exc.message, exc.retry_after_s)
        response = web.Response(
            body=msgspec.json.encode(body), status=exc.status, content_type="application/json"
        )
        response.headers["Retry-After"] = str(exc.retry_after_s)
        return response


async def _renew(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    authority = request.app[AUTHORITY]
    now = request.app[CLOCK]()
    identity = certificate_identity(request, authority, now)
    old_serial = serial_hex(identity.serial)
    body = _decode(await request.read())
    try:
        csr = pki.validate_csr(body.csr.encode("utf-8"))
    except pki.CsrRejected as exc:
        raise CsrRejected(str(exc)) from exc
    public_key = csr.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey) or public_key.key_size != RENEWAL_KEY_BITS:
        raise CsrRejected(f"A renewal needs a new RSA-{RENEWAL_KEY_BITS} key.")
    new_kid = pki.spki_sha256_kid(public_key)

    async with request.app[POOL].acquire() as conn, conn.transaction():
        retry = await queries.pending_renewal(
            conn, identity.tenant_id, identity.agent_id, old_serial
        )
        if retry is not None and retry.new_kid == new_kid:
            agent = await queries.get_agent(conn, identity.tenant_id, identity.agent_id)
            if agent is not None and agent.cert_serial == retry.new_serial:
                log.info("agent_renewal_repeated", serial=retry.new_serial)
                return _answer(request, agent, retry.new_certificate, retry.new_serial)
        agent = await verified_agent(conn, identity, lock=True)
        if await queries.key_was_used(conn, new_kid):
            raise RenewalReplayed(detail=f"kid {new_kid}")
        # Only inside the renewal window: each renewal revokes a serial, stores a row and
        # makes every STS reload the tenant's keys, so an agent (or a stolen key) must not
        # be able to loop through them.
        if not should_renew(
            agent.cert_not_after, now=now, renew_before_days=settings.renew_before_days
        ):
            raise RenewalNotDue(detail=f"not_after {agent.cert_not_after.isoformat()}")
        held = await leases.acquire(
            conn,
            agent.tenant_id,
            leases.RENEWAL,
            holder=agent.id,
            ttl_s=settings.renewal_lease_s,
            now=now,
        )
        if held is not None:
            retry_after_s = min(held.retry_after_s(now), settings.renewal_retry_after_s)
            raise RenewalInProgress(
                retry_after_s=retry_after_s, detail=f"held by agent {held.holder}"
            )
        issued = authority.issue_agent_certificate(
            csr,
            tenant_id=agent.tenant_id,
            agent_id=agent.id,
            now=now,
            lifetime_days=settings.agent_cert_lifetime_days,
            crl_url=settings.pta_crl_url,
        )
        await queries.replace_agent_key(
            conn,
            agent.id,
            spki=issued.spki,
            kid=issued.kid,
            cert_serial=issued.serial,
            cert_not_after=issued.not_after,
        )
        await queries.insert_revocation(
            conn,
            issuer=PTA_ISSUER,
            serial=old_serial,
            tenant_id=agent.tenant_id,
            agent_id=agent.id,
            reason=SUPERSEDED,
            now=now,
        )
        await queries.insert_renewal(
            conn,
            queries.Renewal(
                new_serial=issued.serial,
                tenant_id=agent.tenant_id,
                agent_id=agent.id,
                old_serial=old_serial,
                old_kid=agent.kid,
                new_kid=issued.kid,
                new_certificate=issued.pem,
                renewed_at=now,
                completed_at=None,
            ),
        )
    request.app[CRLS].invalidate(PTA_ISSUER)
    log.info(
        "agent_renewed",
        old_serial=old_serial,
        serial=issued.serial,
        old_kid=agent.kid,
        kid=issued.kid,
        not_after=issued.not_after.isoformat(),
    )
    return _answer(request, agent, issued.pem, issued.serial)


def _answer(request: web.Request, agent: AgentRecord, pem: str, serial: str) -> web.Response:
    cert = pki.load_certificate_pem(pem.encode("ascii"))
    return json_response(
        RenewAnswer(
            agent_id=agent.id,
            tenant_id=agent.tenant_id,
            certificate=pem,
            ca_certificate=request.app[AUTHORITY].pta_cert_pem,
            not_after=cert.not_valid_after_utc,
            kid=pki.spki_sha256_kid(cert.public_key()),
            serial=serial,
        )
    )


def _decode(body: bytes) -> RenewRequest:
    try:
        return msgspec.json.decode(body, type=RenewRequest)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"Invalid request body: {exc}.") from exc
    except msgspec.DecodeError as exc:
        raise InvalidRequest("The request body is not a JSON object.") from exc


async def complete(conn: asyncpg.Connection, agent: AgentRecord, now: dt.datetime) -> None:
    """The agent used its current certificate: if that ends a renewal, release the
    tenant's renewal lease (called by ``ca.bootstrap`` inside its transaction)."""
    if await queries.complete_renewal(conn, agent.id, agent.cert_serial, now):
        await leases.release(conn, agent.tenant_id, leases.RENEWAL, holder=agent.id)
        log.info("agent_renewal_completed", serial=agent.cert_serial)


def should_renew(not_after: dt.datetime, *, now: dt.datetime, renew_before_days: int) -> bool:
    """True from ``renew_before_days`` before the certificate expires (docs/design.md §3.4)."""
    return now >= not_after - dt.timedelta(days=renew_before_days)


def renewal_state(
    agent: AgentRecord, *, now: dt.datetime, renew_before_days: int, pending: bool
) -> str:
    """What ``GET /agents`` shows as ``renewal``: ``in_progress`` (a new certificate was
    issued and the agent has not yet used it), ``due`` (inside the renewal window),
    ``expired``, or ``not_due``."""
    if pending:
        return "in_progress"
    if agent.cert_not_after <= now:
        return "expired"
    if should_renew(agent.cert_not_after, now=now, renew_before_days=renew_before_days):
        return "due"
    return "not_due"


# -- expiry ----------------------------------------------------------------------------------


async def sweep_expired(app: web.Application, now: dt.datetime) -> list[str]:
    """Delete every agent whose certificate has expired by ``now``; returns their ids."""

    async def select(conn: asyncpg.Connection) -> list[queries.ExpiredAgent]:
        return await queries.lock_expired_agents(conn, now, 1)

    return await sweep_agents(
        app, now, select=select, reason=EXPIRED, event="agent_expired_deleted"
    )


async def sweep_agents(
    app: web.Application,
    now: dt.datetime,
    *,
    select: Callable[[asyncpg.Connection], Awaitable[list[queries.ExpiredAgent]]],
    reason: str,
    event: str,
) -> list[str]:
    """Delete the agents ``select`` locks, one per transaction, as an admin's delete does
    (serial revoked with ``reason``, broker user deleted, row deleted); returns their ids.
    A broker failure leaves that agent for the next sweep. Shared by expiry and the
    inactive-agent sweep (``ca.lifecycle``).
    """
    deleted: list[str] = []
    while True:
        async with app[POOL].acquire() as conn, conn.transaction():
            found = await select(conn)
            if not found:
                break
            agent = found[0]
            try:
                await retire_agent(conn, app[BROKER], agent, reason=reason, now=now)
            except BrokerUnavailable as exc:
                log.warning("agent_sweep_postponed", agent_id=agent.id, error=str(exc))
                raise
        log.warning(
            event,
            agent_id=agent.id,
            tenant_id=agent.tenant_id,
            serial=agent.cert_serial,
            not_after=agent.cert_not_after.isoformat(),
        )
        deleted.append(agent.id)
        if len(deleted) >= SWEEP_BATCH:
            break
    if deleted:
        app[CRLS].invalidate(PTA_ISSUER)
    return deleted
