"""Register and unregister this host's agent (docs/design.md §3.1, docs/architecture.md).

``register``: refuse an existing registration (unless ``force``), get an admin token,
generate the RSA-2048 key in memory, send only the CSR, check what the CA returns (the
certificate carries our key, names the agent and tenant the CA says, and chains to the
returned PTA CA), then write the state folder: the key first, mode 0600, and
``agent.json`` last. Nothing is written before the CA has answered, so a refused
registration leaves no files behind.

``unregister``: delete the agent in the cloud with an admin token (which revokes its
certificate and its broker user), then delete the local state files. An agent the cloud
no longer knows is still removed locally.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from agent import state
from agent.cloud import (
    AgentNotFound,
    CaClient,
    IssuedCertificate,
    registered_ca_options,
    registered_trust,
)
from agent.errors import AgentError
from agent.signin import Login, acquire_admin_token
from common import pki, tls

log = structlog.get_logger(__name__)

AGENT_KEY_BITS = 2048  # docs/design.md §3.1 step 2


class CaBundleUnusable(AgentError):
    """The CA bundle cannot be used: give the PEM file of the service TLS CA with
    --ca-bundle or PTA_AGENT_CA_BUNDLE (`ca_bundle` in the stack's stack.json)."""


class CertificateMismatch(AgentError):
    """The CA returned a certificate that does not fit this registration, so nothing was
    saved: check that --server is the PTA CA, then report it to the cloud's operator."""


@dataclass(frozen=True, slots=True)
class Unregistered:
    """What ``unregister`` did."""

    agent_id: str
    deleted_in_cloud: bool  # False: the cloud no longer knew the agent
    removed: list[Path]


def new_key_and_csr() -> tuple[rsa.RSAPrivateKey, bytes]:
    """A fresh RSA-2048 key and its CSR (PEM): empty subject, no extensions."""
    key = pki.new_rsa_key(AGENT_KEY_BITS)
    return key, pki.csr_pem(pki.new_agent_csr(key))


def tenant_id_of(tenant: str) -> str | None:
    """The canonical tenant id when ``tenant`` is a GUID, None for a domain name."""
    try:
        return str(uuid.UUID(tenant))
    except ValueError:
        return None


async def register(
    *,
    state_dir: Path,
    ca_url: str,
    ca_bundle: Path,
    tenant: str,
    host: str,
    version: str,
    login: Login,
    force: bool,
    timeout_s: float,
) -> state.Registration:
    """Register this host as an agent of ``tenant`` and write ``state_dir``.

    Raises AlreadyRegistered, CaBundleUnusable, SignInError, CaError, CertificateMismatch,
    the https errors, and OSError when the state folder cannot be written.
    """
    state.ensure_can_register(state_dir, force=force)
    ca_url = ca_url.rstrip("/")
    bundle_pem = _read_bundle(ca_bundle)
    trust = f"the CA bundle given with --ca-bundle ({ca_bundle})"
    try:
        context = tls.client_context(ca_bundle)
    except tls.TlsConfigError as exc:
        raise CaBundleUnusable(str(exc)) from exc
    token = await acquire_admin_token(
        ca_url, tenant, login, ssl_context=context, trust=trust, timeout_s=timeout_s
    )
    key, csr = new_key_and_csr()
    tenant_id = tenant_id_of(tenant)
    async with CaClient(ca_url, ssl_context=context, trust=trust, timeout_s=timeout_s) as ca:
        issued = await ca.register(
            token.value, csr, host=host, version=version, tenant_id=tenant_id
        )
    now = dt.datetime.now(dt.UTC)
    cert, pta_ca = check_issued(issued, key, tenant_id=tenant_id, now=now)
    record = state.AgentRecord(
        agent_id=issued.agent_id,
        tenant_id=issued.tenant_id,
        ca_url=ca_url,
        host=host,
        version=version,
        registered_at=now,
    )
    saved = state.save(
        state_dir,
        record=record,
        key=key,
        certificate=cert,
        pta_ca=pta_ca,
        ca_bundle_pem=bundle_pem,
        force=force,
    )
    log.info(
        "agent_registered",
        agent_id=issued.agent_id,
        tenant_id=issued.tenant_id,
        kid=saved.kid,
        not_after=saved.not_after.isoformat(),
    )
    return saved


def check_issued(
    issued: IssuedCertificate,
    key: rsa.RSAPrivateKey,
    *,
    tenant_id: str | None,
    now: dt.datetime,
) -> tuple[x509.Certificate, list[x509.Certificate]]:
    """Check the CA's answer before anything is saved; return (certificate, PTA CA).

    Raises CertificateMismatch naming what does not fit.
    """
    try:
        cert = pki.load_certificates_pem(issued.certificate.encode())[0]
        pta_ca = pki.load_certificates_pem(issued.ca_certificate.encode())
        identity = pki.agent_identity(cert)
    except pki.PkiError as exc:
        raise CertificateMismatch(str(exc)) from exc
    if pki.spki_der(cert.public_key()) != pki.spki_der(key.public_key()):
        raise CertificateMismatch("The certificate is for another key.")
    if (identity.agent_id, identity.tenant_id) != (issued.agent_id, issued.tenant_id):
        raise CertificateMismatch("The certificate names another agent or tenant.")
    if tenant_id is not None and issued.tenant_id != tenant_id:
        raise CertificateMismatch(f"The agent was registered in tenant {issued.tenant_id}.")
    try:
        pki.verify_issued_by(cert, pta_ca[0], now=now)
    except pki.PkiError as exc:
        raise CertificateMismatch(str(exc)) from exc
    return cert, pta_ca


async def unregister(
    registration: state.Registration, *, login: Login, timeout_s: float
) -> Unregistered:
    """Delete the agent in the cloud, then its local state files.

    The token is asked for the agent's tenant, over TLS pinned to the registration's
    bundle. Raises SignInError, CaError (other than agent_not_found), https errors;
    the local files stay when the cloud could not be told.
    """
    record = registration.record
    context = registration.server_tls()
    trust = registered_trust(registration)
    token = await acquire_admin_token(
        record.ca_url, record.tenant_id, login, ssl_context=context, trust=trust,
        timeout_s=timeout_s,
    )  # fmt: skip
    deleted = True
    async with CaClient(
        **registered_ca_options(registration, timeout_s=timeout_s, mutual_tls=False)
    ) as ca:
        try:
            await ca.delete_agent(token.value, record.agent_id)
        except AgentNotFound:
            deleted = False
    removed = state.remove(registration.dir.path)
    log.info("agent_unregistered", agent_id=record.agent_id, deleted_in_cloud=deleted)
    return Unregistered(agent_id=record.agent_id, deleted_in_cloud=deleted, removed=removed)


def _read_bundle(path: Path) -> bytes:
    try:
        data = path.read_bytes()
        pki.load_certificates_pem(data)
    except OSError as exc:
        raise CaBundleUnusable(f"Cannot read {path}: {exc.strerror}.") from exc
    except pki.PemInvalid as exc:
        raise CaBundleUnusable(f"{path} holds no PEM certificate.") from exc
    return data
