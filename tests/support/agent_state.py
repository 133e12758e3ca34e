"""A real registration for agent tests: PTA CA, agent key and signed certificate.

``issue`` builds what the CA would return for one agent; ``saved_registration`` writes it
to a state folder (agent.state) and loads it back.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from agent import state
from common import pki

NOW = dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Issued:
    """What the CA would return for one agent, plus the agent's own key."""

    key: rsa.RSAPrivateKey
    certificate: x509.Certificate
    pta_ca: x509.Certificate
    service_ca_pem: bytes
    agent_id: str
    tenant_id: str


def issue(
    *,
    tenant_id: str | None = None,
    agent_id: str | None = None,
    key: rsa.RSAPrivateKey | None = None,
    lifetime_days: int = 180,
) -> Issued:
    tenant_id = tenant_id or str(uuid.uuid4())
    agent_id = agent_id or str(uuid.uuid4())
    key = key or pki.new_rsa_key()
    ca_cert, ca_key = pki.make_ca("Test PTA CA", now=NOW, lifetime_days=3650)
    service_ca, _ = pki.make_ca("Test service TLS CA", now=NOW, lifetime_days=3650)
    cert = pki.sign_agent_csr(
        pki.new_agent_csr(key),
        issuer_cert=ca_cert,
        issuer_key=ca_key,
        tenant_id=tenant_id,
        agent_id=agent_id,
        now=NOW,
        lifetime_days=lifetime_days,
    )
    return Issued(key, cert, ca_cert, pki.certificate_pem(service_ca), agent_id, tenant_id)


def record_for(issued: Issued, **changes: object) -> state.AgentRecord:
    fields: dict[str, object] = {
        "agent_id": issued.agent_id,
        "tenant_id": issued.tenant_id,
        "ca_url": "https://ca.test:8443",
        "host": "host-1",
        "version": "0.1.0",
        "registered_at": NOW,
    }
    fields.update(changes)
    return state.AgentRecord.model_validate(fields)


def saved_registration(path: Path, issued: Issued | None = None) -> state.Registration:
    issued = issued or issue()
    return state.save(
        path,
        record=record_for(issued),
        key=issued.key,
        certificate=issued.certificate,
        pta_ca=[issued.pta_ca],
        ca_bundle_pem=issued.service_ca_pem,
        force=False,
    )
