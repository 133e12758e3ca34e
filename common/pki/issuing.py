"""Issuing certificates: the two self-signed CAs, HTTPS server certificates and agent
client certificates, with the checks that keep an issuer from signing past its own life."""

from __future__ import annotations

import datetime as dt
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.pki.csr import check_agent_csr
from common.pki.errors import IssuerUnusable
from common.pki.identity import AGENT_URI_PREFIX, canonical_id, is_ca
from common.pki.keys import PrivateKey, key_kind, new_ec_key, spki_der
from common.pki.validity import CLOCK_SKEW, MAX_SERIAL, lifetime, random_serial, utc


def make_ca(
    common_name: str,
    *,
    now: dt.datetime,
    lifetime_days: int,
    key: PrivateKey | None = None,
) -> tuple[x509.Certificate, PrivateKey]:
    """Create a self-signed CA that signs end-entity certificates only.

    Used for the PTA CA (agent client certificates) and the service TLS CA (HTTPS
    server certificates). BasicConstraints ca=True with path_length=0 (no sub-CAs),
    KeyUsage keyCertSign and cRLSign, both critical (RFC 5280 sections 4.2.1.9, 4.2.1.3).

    Raises ValueError for a naive ``now``, an empty name or a non-positive lifetime.
    """
    now = utc(now)
    if not common_name:
        raise ValueError("CA common name must not be empty")
    validity_period = lifetime(lifetime_days)
    key = key if key is not None else new_ec_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + validity_period)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(ski, critical=False)
        # RFC 5280 section 4.2.1.1 lets a self-signed CA omit the AKI; we keep it for
        # tools that build chains by key id.
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
            critical=False,
        )
        .sign(key, hash_for(key))
    )
    return cert, key


def issue_server_cert(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    *,
    hostnames: list[str],
    ips: list[str],
    now: dt.datetime,
    lifetime_days: int,
    crl_url: str | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Issue an HTTPS server certificate (EC P-256) for the STS or the CA.

    SANs carry every host name and IP (clients match SANs only, RFC 6125 section 6.4.4);
    EKU serverAuth; ``crl_url`` (the service CRL, ``.../service.crl``) is named as its CRL
    distribution point. Raises ValueError when no name is given or an IP does not parse,
    IssuerUnusable when the CA cannot sign it (not a CA, wrong key, expires too soon).
    """
    now = utc(now)
    validity_period = lifetime(lifetime_days)
    if not hostnames and not ips:
        raise ValueError("a server certificate needs at least one host name or IP")
    for host in hostnames:
        if not host or not host.isascii():
            raise ValueError(f"host name {host!r} must be non-empty ASCII (IDNA A-label)")
    addresses = [ipaddress.ip_address(ip) for ip in ips]
    not_after = now + validity_period
    _check_issuer(ca_cert, ca_key, now=now, not_after=not_after)
    key = new_ec_key()
    names: list[x509.GeneralName] = [x509.DNSName(host) for host in hostnames]
    names += [x509.IPAddress(address) for address in addresses]
    first = hostnames[0] if hostnames else str(addresses[0])
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, first)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # ECDHE-ECDSA needs digitalSignature only (RFC 5480 section 3).
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(authority_key_id(ca_cert), critical=False)
    )
    if crl_url is not None:
        builder = builder.add_extension(crl_distribution_points(crl_url), critical=False)
    cert = builder.sign(ca_key, hash_for(ca_key))
    return cert, key


def sign_agent_csr(
    csr: x509.CertificateSigningRequest,
    *,
    issuer_cert: x509.Certificate,
    issuer_key: PrivateKey,
    tenant_id: str,
    agent_id: str,
    now: dt.datetime,
    lifetime_days: int,
    serial: int | None = None,
    crl_url: str | None = None,
) -> x509.Certificate:
    """Sign an agent's client certificate with the PTA CA (docs/design.md §3.1 step 4).

    Subject exactly ``CN=<tenant id>`` (the CSR's subject is ignored), SAN URI
    ``urn:pta:agent:<agent id>``, EKU clientAuth only, KeyUsage digitalSignature (TLS
    client auth) and keyEncipherment (the envelope wraps content keys with RSA-OAEP),
    BasicConstraints ca=False, AKI/SKI, random 159-bit serial, valid from
    ``now - CLOCK_SKEW`` to ``now + lifetime_days``, ``crl_url`` (the PTA CRL,
    ``.../pta.crl``) as CRL distribution point. The CSR is vetted again here so no
    caller can sign an unchecked request.

    Raises IdentifierInvalid (ids not canonical lowercase UUIDs), a CsrRejected subclass,
    IssuerUnusable (issuer not a CA, key not its own, or expiring before the new
    certificate), ValueError (serial out of range, naive ``now``, bad lifetime).
    """
    now = utc(now)
    validity_period = lifetime(lifetime_days)
    tenant = canonical_id(tenant_id, "tenant id")
    agent = canonical_id(agent_id, "agent id")
    if serial is None:
        serial = random_serial()
    elif not 0 < serial < MAX_SERIAL:
        raise ValueError("serial must be positive and below 2**159 (RFC 5280 4.1.2.2)")
    check_agent_csr(csr)
    not_after = now + validity_period
    _check_issuer(issuer_cert, issuer_key, now=now, not_after=not_after)
    public_key = csr.public_key()
    builder = (
        x509.CertificateBuilder()
        # docs/design.md §3.1: the DN is the tenant GUID; tenant isolation rests on it.
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, tenant)]))
        .issuer_name(issuer_cert.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True, key_encipherment=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"{AGENT_URI_PREFIX}{agent}")]
            ),
            critical=False,  # RFC 5280 4.2.1.6: critical only when the subject is empty
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(authority_key_id(issuer_cert), critical=False)
    )
    if crl_url is not None:
        builder = builder.add_extension(crl_distribution_points(crl_url), critical=False)
    return builder.sign(issuer_key, hash_for(issuer_key))


def crl_distribution_points(crl_url: str) -> x509.CRLDistributionPoints:
    """One distribution point, the full name ``crl_url`` (RFC 5280 4.2.1.13); plain HTTP
    on purpose: a CRL is signed, and checking it must not need TLS to the CA."""
    if not crl_url.startswith(("http://", "https://")):
        raise ValueError(f"a CRL distribution point must be an HTTP URL, got {crl_url!r}")
    point = x509.DistributionPoint(
        full_name=[x509.UniformResourceIdentifier(crl_url)],
        relative_name=None,
        reasons=None,
        crl_issuer=None,
    )
    return x509.CRLDistributionPoints([point])


def hash_for(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384:
    """SHA-256, or SHA-384 for EC curves above 256 bits (RFC 5480 section 4)."""
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def _key_usage(
    *,
    digital_signature: bool = False,
    key_encipherment: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def authority_key_id(issuer_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """AKI equal to the issuer's SKI when it has one (RFC 5280 section 4.2.1.1)."""
    try:
        ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(_issuer_public_key(issuer_cert))
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)


def _issuer_public_key(
    issuer_cert: x509.Certificate,
) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    key = issuer_cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise IssuerUnusable(f"Unsupported issuer key type {key_kind(key)}.")
    return key


def check_key_matches(issuer_cert: x509.Certificate, issuer_key: PrivateKey) -> None:
    """Raises IssuerUnusable unless ``issuer_key`` is the key of ``issuer_cert``."""
    if spki_der(issuer_key.public_key()) != spki_der(_issuer_public_key(issuer_cert)):
        raise IssuerUnusable("The private key does not belong to the CA certificate.")


def _check_issuer(
    issuer_cert: x509.Certificate,
    issuer_key: PrivateKey,
    *,
    now: dt.datetime,
    not_after: dt.datetime,
) -> None:
    """A certificate the issuer cannot vouch for over its whole life is refused."""
    if not is_ca(issuer_cert):
        raise IssuerUnusable("The issuer certificate is not a CA.")
    check_key_matches(issuer_cert, issuer_key)
    if now < issuer_cert.not_valid_before_utc:
        raise IssuerUnusable("The CA is not valid yet.")
    if not_after > issuer_cert.not_valid_after_utc:
        raise IssuerUnusable(
            f"The CA expires at {issuer_cert.not_valid_after_utc.isoformat()}, before the "
            f"new certificate would ({not_after.isoformat()}); rotate the CA."
        )
