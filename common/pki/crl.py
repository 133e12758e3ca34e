"""Certificate revocation lists of the PTA CA and the service TLS CA."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from common.pki.issuing import authority_key_id, check_key_matches, hash_for
from common.pki.keys import PrivateKey
from common.pki.validity import utc


def build_crl(
    issuer_cert: x509.Certificate,
    issuer_key: PrivateKey,
    revoked: Iterable[tuple[int, dt.datetime]],
    *,
    now: dt.datetime,
    next_update_hours: int = 24,
    crl_number: int | None = None,
) -> x509.CertificateRevocationList:
    """Build a CRL for the PTA CA or the service TLS CA (docs/design.md §3.4 "Revocation").

    ``revoked`` holds ``(serial, revoked_at)`` pairs; a serial listed twice keeps its
    earliest date. The CRL carries the AKI and a CRL number, both required of a
    conforming CA (RFC 5280 sections 5.2.1 and 5.2.3); ``crl_number`` defaults to
    ``now`` in Unix seconds. Raises ValueError for a naive datetime or a
    non-positive ``next_update_hours``, IssuerUnusable when the key is not the issuer's.
    """
    now = utc(now)
    if next_update_hours <= 0:
        raise ValueError("next_update_hours must be positive")
    check_key_matches(issuer_cert, issuer_key)
    earliest: dict[int, dt.datetime] = {}
    for serial, revoked_at in revoked:
        at = utc(revoked_at)
        earliest[serial] = min(at, earliest.get(serial, at))
    number = crl_number if crl_number is not None else int(now.timestamp())
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer_cert.subject)
        .last_update(now)
        .next_update(now + dt.timedelta(hours=next_update_hours))
        .add_extension(authority_key_id(issuer_cert), critical=False)
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for serial in sorted(earliest):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(earliest[serial])
            .build()
        )
    return builder.sign(issuer_key, hash_for(issuer_key))


def crl_der(crl: x509.CertificateRevocationList) -> bytes:
    """DER encoding of a CRL, served as ``application/pkix-crl`` (RFC 2585 section 4.2)."""
    return crl.public_bytes(serialization.Encoding.DER)
