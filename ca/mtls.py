"""Agents authenticated by their client certificate (docs/design.md §3.2 step 2).

The HTTPS listener asks for a client certificate from the PTA CA but does not require one
(``common.tls.server_context(..., require_client_cert=False)``: CERT_OPTIONAL), so bearer
endpoints share the port. A certificate that is presented has already been verified by
the handshake (chain to the PTA CA, validity dates): one from another CA, or an expired
one, never reaches a handler. Here, for mutual-TLS endpoints:

1. ``certificate_identity``: a certificate must be present (else 401
   ``client_certificate_required``); it must have the agent shape (``CN=<tenant id>``,
   SAN ``urn:pta:agent:<agent id>``); it is checked again against the PTA CA and the
   clock (defence in depth, costs one signature check).
2. ``verified_agent``, inside the caller's transaction: the serial is not revoked (401
   ``certificate_revoked``), an agent with this tenant and id exists (401
   ``agent_not_found``), and its current serial is this one (401
   ``certificate_superseded``). Revocation is checked first: a deleted agent's
   certificate is reported as revoked, which is what the agent must be told; a
   certificate revoked because a renewal replaced it as superseded, and one whose agent
   was deleted at expiry as ``certificate_expired`` (register again).
"""

from __future__ import annotations

import datetime as dt

import asyncpg
import structlog
from aiohttp import web

from ca import queries
from ca.authority import Authority, serial_hex
from ca.errors import (
    AgentUnknown,
    CertificateExpired,
    CertificateRevoked,
    CertificateSuperseded,
    ClientCertificateExpired,
    ClientCertificateRequired,
)
from ca.queries import AgentRecord
from common import pki
from common.tls import peer_certificate

PTA_ISSUER = "pta"
"""``revocations.issuer`` of agent certificates."""
SUPERSEDED = "superseded"
"""``revocations.reason`` of a certificate replaced by a renewal (ca.renewal)."""
EXPIRED = "certificate_expired"
"""``revocations.reason`` of an agent deleted because its certificate expired."""


def certificate_identity(
    request: web.Request, authority: Authority, now: dt.datetime
) -> pki.AgentIdentity:
    """The agent identity of the request's verified client certificate.

    Binds ``tenant_id`` and ``agent_id`` to the log context. Raises
    ClientCertificateRequired (none, or not an agent certificate of our PTA CA) and
    ClientCertificateExpired.
    """
    cert = peer_certificate(request.transport)
    if cert is None:
        raise ClientCertificateRequired()
    try:
        identity = pki.agent_identity(cert)
        pki.verify_issued_by(cert, authority.pta_cert, now=now)
    except (pki.CertificateExpired, pki.CertificateNotYetValid) as exc:
        raise ClientCertificateExpired(detail=str(exc)) from exc
    except pki.CertificateRejected as exc:
        raise ClientCertificateRequired(
            "The client certificate is not an agent certificate of this CA.", detail=str(exc)
        ) from exc
    structlog.contextvars.bind_contextvars(tenant_id=identity.tenant_id, agent_id=identity.agent_id)
    return identity


async def verified_agent(
    conn: asyncpg.Connection, identity: pki.AgentIdentity, *, lock: bool = False
) -> AgentRecord:
    """The registered agent this certificate currently speaks for.

    ``lock`` keeps the agent row locked until the caller's transaction ends. Raises
    CertificateRevoked, CertificateExpired, AgentUnknown, CertificateSuperseded.
    """
    serial = serial_hex(identity.serial)
    agent = await queries.get_agent(conn, identity.tenant_id, identity.agent_id, lock=lock)
    # Read after the row lock: a concurrent delete has committed its revocation by now.
    reason = await queries.revocation_reason(conn, PTA_ISSUER, serial)
    if reason == SUPERSEDED:
        raise CertificateSuperseded()
    if reason == EXPIRED:
        raise CertificateExpired()
    if reason is not None:
        raise CertificateRevoked()
    if agent is None:
        raise AgentUnknown()
    if agent.cert_serial != serial:
        raise CertificateSuperseded()
    return agent
