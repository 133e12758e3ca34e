"""The two CAs this service holds: the PTA CA signs agents, the service TLS CA only its CRL.

Keys are loaded once at start (loading with validation costs ~30 ms, docs/servers.md) and
kept as objects. Signing goes through ``common.pki`` so the certificate profile stays in
one place; this module adds the choices that belong to the CA service: serials are stored
as lowercase hex without leading zeros, key ids as ``common.pki.spki_sha256_kid``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from ca.errors import ConfigurationError
from common import pki


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """An agent certificate just signed, with what the CA stores about it."""

    certificate: x509.Certificate
    pem: str
    serial: str
    kid: str
    spki: bytes
    not_after: dt.datetime


@dataclass(frozen=True, slots=True)
class Authority:
    """The CA certificates and keys, loaded and checked to belong together."""

    pta_cert: x509.Certificate
    pta_key: pki.PrivateKey
    service_cert: x509.Certificate
    service_key: pki.PrivateKey

    @property
    def pta_cert_pem(self) -> str:
        return pki.certificate_pem(self.pta_cert).decode("ascii")

    def issue_agent_certificate(
        self,
        csr: x509.CertificateSigningRequest,
        *,
        tenant_id: str,
        agent_id: str,
        now: dt.datetime,
        lifetime_days: int,
        crl_url: str | None = None,
    ) -> IssuedCertificate:
        """Sign an agent's vetted CSR with the PTA CA (docs/design.md §3.1 step 4).

        ``crl_url`` is the PTA CRL's URL (``{settings.crl_url}/pta.crl``), named in the
        certificate as its CRL distribution point. Raises the ``common.pki`` errors of
        ``sign_agent_csr``.
        """
        cert = pki.sign_agent_csr(
            csr,
            issuer_cert=self.pta_cert,
            issuer_key=self.pta_key,
            tenant_id=tenant_id,
            agent_id=agent_id,
            now=now,
            lifetime_days=lifetime_days,
            crl_url=crl_url,
        )
        public_key = cert.public_key()
        return IssuedCertificate(
            certificate=cert,
            pem=pki.certificate_pem(cert).decode("ascii"),
            serial=serial_hex(cert.serial_number),
            kid=pki.spki_sha256_kid(public_key),
            spki=pki.spki_der(public_key),
            not_after=cert.not_valid_after_utc,
        )


def serial_hex(serial: int) -> str:
    """The stored form of a certificate serial: lowercase hex, no leading zeros."""
    return format(serial, "x")


def serial_int(stored: str) -> int:
    """Inverse of ``serial_hex``; raises ValueError on a malformed value."""
    return int(stored, 16)


def load_authority(
    *,
    pta_cert_file: Path,
    pta_key_file: Path,
    service_cert_file: Path,
    service_key_file: Path,
) -> Authority:
    """Read both CAs from their files; fail at start, naming the setting, if unusable.

    Raises ConfigurationError.
    """
    pta_cert, pta_key = _load_pair(pta_cert_file, pta_key_file, "pta_ca")
    service_cert, service_key = _load_pair(service_cert_file, service_key_file, "service_ca")
    return Authority(pta_cert, pta_key, service_cert, service_key)


def _load_pair(
    cert_file: Path, key_file: Path, setting: str
) -> tuple[x509.Certificate, pki.PrivateKey]:
    try:
        cert = pki.load_certificate_pem(cert_file.read_bytes())
    except (OSError, pki.PkiError) as exc:
        raise ConfigurationError(
            f"Cannot read the CA certificate {cert_file} ({exc}); "
            f"check PTA_CA_{setting.upper()}_CERT_FILE."
        ) from exc
    try:
        key = pki.read_private_key(key_file)
    except (OSError, pki.PkiError) as exc:
        raise ConfigurationError(
            f"Cannot read the CA key {key_file} ({exc}); check PTA_CA_{setting.upper()}_KEY_FILE."
        ) from exc
    if pki.spki_der(key.public_key()) != pki.spki_der(cert.public_key()):
        raise ConfigurationError(
            f"The key {key_file} does not belong to the certificate {cert_file}; "
            f"check PTA_CA_{setting.upper()}_CERT_FILE and PTA_CA_{setting.upper()}_KEY_FILE."
        )
    return cert, key
