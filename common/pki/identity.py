"""Agent identity: who an agent certificate speaks for, and whether a CA issued it."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.encoding import is_canonical_uuid
from common.pki.errors import (
    AgentIdentityInvalid,
    CertificateExpired,
    CertificateNotYetValid,
    CertificateUntrusted,
    IdentifierInvalid,
)
from common.pki.validity import utc

AGENT_URI_PREFIX = "urn:pta:agent:"
"""SAN URI prefix of agent certificates (docs/design.md §3.1 step 4)."""


@dataclass(frozen=True, slots=True)
class AgentIdentity:
    """Who an agent certificate speaks for (docs/design.md §3.2 step 2)."""

    tenant_id: str
    agent_id: str
    serial: int
    not_after: dt.datetime


def agent_identity(cert: x509.Certificate) -> AgentIdentity:
    """Read tenant, agent, serial and expiry from an agent certificate.

    Checks the shape ``sign_agent_csr`` produces: subject exactly one CN holding a
    canonical UUID, exactly one SAN, a ``urn:pta:agent:<uuid>`` URI, EKU with
    clientAuth, not a CA. It does not check the issuer or the dates: pair it with
    ``verify_issued_by`` or a verified TLS handshake.

    Raises AgentIdentityInvalid when the certificate has another shape.
    """
    attributes = list(cert.subject)
    if len(attributes) != 1 or attributes[0].oid != NameOID.COMMON_NAME:
        raise AgentIdentityInvalid("The subject must be exactly CN=<tenant id>.")
    tenant = _identity_uuid(attributes[0].value, "subject CN")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound as exc:
        raise AgentIdentityInvalid("SAN and EKU are required.") from exc
    except ValueError as exc:  # duplicate or undecodable extensions
        raise AgentIdentityInvalid("The extensions do not decode.") from exc
    names = list(san)
    if len(names) != 1 or not isinstance(names[0], x509.UniformResourceIdentifier):
        raise AgentIdentityInvalid("The SAN must be exactly one agent URI.")
    uri = names[0].value
    if not uri.startswith(AGENT_URI_PREFIX):
        raise AgentIdentityInvalid(f"The SAN URI must start with {AGENT_URI_PREFIX}.")
    agent = _identity_uuid(uri.removeprefix(AGENT_URI_PREFIX), "SAN URI")
    if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise AgentIdentityInvalid("The EKU must include clientAuth.")
    if is_ca(cert):
        raise AgentIdentityInvalid("A CA certificate is not an agent certificate.")
    return AgentIdentity(
        tenant_id=tenant,
        agent_id=agent,
        serial=cert.serial_number,
        not_after=cert.not_valid_after_utc,
    )


def verify_issued_by(
    cert: x509.Certificate, ca_cert: x509.Certificate, *, now: dt.datetime
) -> None:
    """Check that ``ca_cert`` issued ``cert`` and both are valid at ``now``.

    Checks issuer name, signature, that ``ca_cert`` is a CA, and both validity windows
    (inclusive, RFC 5280 section 4.1.2.5). Revocation is the caller's (DB or CRL).

    Raises CertificateUntrusted (other issuer, bad signature, issuer not a CA),
    CertificateNotYetValid, CertificateExpired.
    """
    now = utc(now)
    if cert.issuer != ca_cert.subject:
        raise CertificateUntrusted(
            f"Issuer '{cert.issuer.rfc4514_string()}' is not '{ca_cert.subject.rfc4514_string()}'."
        )
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CertificateUntrusted("The signature does not verify with the CA key.") from exc
    if not is_ca(ca_cert):
        raise CertificateUntrusted("The issuer is not a CA certificate.")
    for which, checked in (("issuing CA", ca_cert), ("certificate", cert)):
        if now < checked.not_valid_before_utc:
            raise CertificateNotYetValid(
                f"The {which} is valid from {checked.not_valid_before_utc.isoformat()}."
            )
        if now > checked.not_valid_after_utc:
            raise CertificateExpired(
                f"The {which} expired at {checked.not_valid_after_utc.isoformat()}."
            )


def is_ca(cert: x509.Certificate) -> bool:
    """True when the certificate's BasicConstraints say it is a CA."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return constraints.ca


def canonical_id(value: str, what: str) -> str:
    """Accept only the canonical lowercase 8-4-4-4-12 form: the CN must match the DB."""
    if is_canonical_uuid(value):
        return value
    try:
        parsed = uuid.UUID(value)
    except (ValueError, TypeError, AttributeError) as exc:
        raise IdentifierInvalid(f"The {what} is not a UUID.") from exc
    raise IdentifierInvalid(f"The {what} must be written {parsed}.")


def _identity_uuid(value: str | bytes, where: str) -> str:
    if not isinstance(value, str):
        raise AgentIdentityInvalid(f"The {where} is not text.")
    try:
        return canonical_id(value, where)
    except IdentifierInvalid as exc:
        raise AgentIdentityInvalid(f"The {where} is not a canonical UUID.") from exc
