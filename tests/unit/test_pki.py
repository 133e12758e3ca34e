"""Unit tests for common.pki: CA profile, CSR vetting, agent certificates, CRLs, key files.

Interop is checked with the real outside tool (``/usr/bin/openssl``) and with
cryptography's RFC 5280 path validator; both verify at the fixed ``NOW`` of these tests.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common import pki

NOW = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.UTC)
TENANT = "5d2a1c3e-7b4f-4c1a-9e0d-2f6b8a9c0d11"
OTHER_TENANT = "0b1c2d3e-4f50-4617-8829-3a4b5c6d7e8f"
AGENT = "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
E = TypeVar("E", bound=x509.ExtensionType)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pta_ca() -> tuple[x509.Certificate, pki.PrivateKey]:
    return pki.make_ca("PTA CA", now=NOW, lifetime_days=3650)


@pytest.fixture(scope="module")
def tls_ca() -> tuple[x509.Certificate, pki.PrivateKey]:
    return pki.make_ca("service TLS CA", now=NOW, lifetime_days=3650)


@pytest.fixture(scope="module")
def agent_key() -> rsa.RSAPrivateKey:
    return pki.new_rsa_key()


@pytest.fixture(scope="module")
def agent_cert(
    pta_ca: tuple[x509.Certificate, pki.PrivateKey], agent_key: rsa.RSAPrivateKey
) -> x509.Certificate:
    csr = pki.validate_csr(pki.csr_pem(pki.new_agent_csr(agent_key)))
    ca_cert, ca_key = pta_ca
    return pki.sign_agent_csr(
        csr,
        issuer_cert=ca_cert,
        issuer_key=ca_key,
        tenant_id=TENANT,
        agent_id=AGENT,
        now=NOW,
        lifetime_days=180,
    )


def _sign(
    ca: tuple[x509.Certificate, pki.PrivateKey],
    key: rsa.RSAPrivateKey,
    *,
    now: dt.datetime = NOW,
    lifetime_days: int = 180,
    tenant_id: str = TENANT,
    agent_id: str = AGENT,
) -> x509.Certificate:
    return pki.sign_agent_csr(
        pki.new_agent_csr(key),
        issuer_cert=ca[0],
        issuer_key=ca[1],
        tenant_id=tenant_id,
        agent_id=agent_id,
        now=now,
        lifetime_days=lifetime_days,
    )


def _pem(label: str, der: bytes) -> bytes:
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return b"\n".join(
        [f"-----BEGIN {label}-----".encode(), *lines, f"-----END {label}-----".encode(), b""]
    )


def _csr(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    edit: Callable[[x509.CertificateSigningRequestBuilder], x509.CertificateSigningRequestBuilder]
    | None = None,
    subject: x509.Name = x509.Name([]),  # noqa: B008 - Name is immutable
) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if edit is not None:
        builder = edit(builder)
    return pki.csr_pem(builder.sign(key, hashes.SHA256()))


def _ext(cert: x509.Certificate, kind: type[E]) -> x509.Extension[E]:
    return cert.extensions.get_extension_for_class(kind)


def _openssl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OPENSSL, *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False
    )


def _ec_public(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    return public


def _at(moment: dt.datetime) -> str:
    return str(int(moment.timestamp()))


# --------------------------------------------------------------------------- profiles


def test_ca_is_self_signed_end_entity_only_ca(
    pta_ca: tuple[x509.Certificate, pki.PrivateKey],
) -> None:
    cert, key = pta_ca
    assert cert.subject == cert.issuer
    assert cert.subject.rfc4514_string() == "CN=PTA CA"
    constraints = _ext(cert, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value == x509.BasicConstraints(ca=True, path_length=0)
    usage = _ext(cert, x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    ski = _ext(cert, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert cert.not_valid_before_utc == NOW - pki.CLOCK_SKEW
    assert cert.not_valid_after_utc == NOW + dt.timedelta(days=3650)
    pki.verify_issued_by(cert, cert, now=NOW)


def test_ca_accepts_given_rsa_key() -> None:
    key = pki.new_rsa_key()
    cert, returned = pki.make_ca("Other CA", now=NOW, lifetime_days=10, key=key)
    assert returned is key
    pki.verify_issued_by(cert, cert, now=NOW)


def test_server_cert_profile(tls_ca: tuple[x509.Certificate, pki.PrivateKey]) -> None:
    cert, key = pki.issue_server_cert(
        *tls_ca,
        hostnames=["localhost", "sts.test"],
        ips=["127.0.0.1", "::1"],
        now=NOW,
        lifetime_days=90,
    )
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    san = _ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "sts.test"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert _ext(cert, x509.BasicConstraints).value.ca is False
    aki = _ext(cert, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == _ext(tls_ca[0], x509.SubjectKeyIdentifier).value.digest
    pki.verify_issued_by(cert, tls_ca[0], now=NOW)
    # cryptography's RFC 5280 / CA-B profile validator agrees, by name and by IP.
    policy = verification.PolicyBuilder().store(verification.Store([tls_ca[0]])).time(NOW)
    policy.build_server_verifier(x509.DNSName("sts.test")).verify(cert, [])


@pytest.mark.parametrize(
    ("hostnames", "ips"), [([], []), (["bad host é"], []), (["ok"], ["not-an-ip"])]
)
def test_server_cert_refuses_bad_names(
    tls_ca: tuple[x509.Certificate, pki.PrivateKey], hostnames: list[str], ips: list[str]
) -> None:
    with pytest.raises(ValueError):
        pki.issue_server_cert(*tls_ca, hostnames=hostnames, ips=ips, now=NOW, lifetime_days=1)


def test_agent_cert_profile(
    pta_ca: tuple[x509.Certificate, pki.PrivateKey], agent_key: rsa.RSAPrivateKey
) -> None:
    # The CSR claims another tenant in its subject: the CA ignores it (docs/design.md §3.1).
    claimed = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, OTHER_TENANT)])
    csr = pki.validate_csr(_csr(agent_key, subject=claimed))
    cert = pki.sign_agent_csr(
        csr,
        issuer_cert=pta_ca[0],
        issuer_key=pta_ca[1],
        tenant_id=TENANT,
        agent_id=AGENT,
        now=NOW,
        lifetime_days=180,
    )
    assert cert.subject.rfc4514_string() == f"CN={TENANT}"
    assert cert.issuer == pta_ca[0].subject
    san = _ext(cert, x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(f"urn:pta:agent:{AGENT}")]
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    usage = _ext(cert, x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature and usage.value.key_encipherment
    assert not usage.value.key_cert_sign
    constraints = _ext(cert, x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca is False
    aki = _ext(cert, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == _ext(pta_ca[0], x509.SubjectKeyIdentifier).value.digest
    assert _ext(cert, x509.SubjectKeyIdentifier).value == (
        x509.SubjectKeyIdentifier.from_public_key(agent_key.public_key())
    )
    assert 0 < cert.serial_number < 2**159
    assert cert.not_valid_before_utc == NOW - dt.timedelta(minutes=5)
    assert cert.not_valid_after_utc == NOW + dt.timedelta(days=180)
    assert pki.spki_der(cert.public_key()) == pki.spki_der(agent_key.public_key())
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)


def test_agent_serials_are_random(
    pta_ca: tuple[x509.Certificate, pki.PrivateKey], agent_key: rsa.RSAPrivateKey
) -> None:
    serials = {_sign(pta_ca, agent_key).serial_number for _ in range(5)}
    assert len(serials) == 5
    explicit = pki.sign_agent_csr(
        pki.new_agent_csr(agent_key),
        issuer_cert=pta_ca[0],
        issuer_key=pta_ca[1],
        tenant_id=TENANT,
        agent_id=AGENT,
        now=NOW,
        lifetime_days=1,
        serial=12345,
    )
    assert explicit.serial_number == 12345


def test_agent_chain_passes_rfc5280_validator(
    pta_ca: tuple[x509.Certificate, pki.PrivateKey], agent_cert: x509.Certificate
) -> None:
    policy = verification.PolicyBuilder().store(verification.Store([pta_ca[0]])).time(NOW)
    verified = policy.build_client_verifier().verify(agent_cert, [])
    assert verified.subjects == [x509.UniformResourceIdentifier(f"urn:pta:agent:{AGENT}")]


# --------------------------------------------------------------------------- openssl interop


def test_openssl_verifies_agent_and_server_certs(
    tmp_path: Path,
    pta_ca: tuple[x509.Certificate, pki.PrivateKey],
    tls_ca: tuple[x509.Certificate, pki.PrivateKey],
    agent_cert: x509.Certificate,
) -> None:
    server_cert, _ = pki.issue_server_cert(
        *tls_ca, hostnames=["localhost"], ips=["127.0.0.1"], now=NOW, lifetime_days=90
    )
    (tmp_path / "pta-ca.pem").write_bytes(pki.certificate_pem(pta_ca[0]))
    (tmp_path / "tls-ca.pem").write_bytes(pki.certificate_pem(tls_ca[0]))
    (tmp_path / "agent.pem").write_bytes(pki.certificate_pem(agent_cert))
    (tmp_path / "server.pem").write_bytes(pki.certificate_pem(server_cert))
    at = _at(NOW)

    agent = _openssl(
        "verify",
        "-x509_strict",
        "-purpose",
        "sslclient",
        "-attime",
        at,
        "-CAfile",
        "pta-ca.pem",
        "agent.pem",
        cwd=tmp_path,
    )
    assert agent.returncode == 0, agent.stderr
    assert agent.stdout.strip() == "agent.pem: OK"

    subject = _openssl("x509", "-noout", "-subject", "-in", "agent.pem", cwd=tmp_path)
    assert subject.stdout.strip() == f"subject=CN = {TENANT}"

    server = _openssl(
        "verify",
        "-x509_strict",
        "-purpose",
        "sslserver",
        "-attime",
        at,
        "-verify_hostname",
        "localhost",
        "-verify_ip",
        "127.0.0.1",
        "-CAfile",
        "tls-ca.pem",
        "server.pem",
        cwd=tmp_path,
    )
    assert server.returncode == 0, server.stderr

    # The PTA CA is used for nothing else: it does not vouch for the server certificate,
    # and an agent certificate is not a server certificate.
    crossed = _openssl("verify", "-attime", at, "-CAfile", "pta-ca.pem", "server.pem", cwd=tmp_path)
    assert crossed.returncode != 0
    wrong_purpose = _openssl(
        "verify",
        "-purpose",
        "sslserver",
        "-attime",
        at,
        "-CAfile",
        "pta-ca.pem",
        "agent.pem",
        cwd=tmp_path,
    )
    assert wrong_purpose.returncode != 0


def test_openssl_made_csr_is_accepted_and_its_subject_ignored(
    tmp_path: Path, agent_key: rsa.RSAPrivateKey
) -> None:
    (tmp_path / "key.pem").write_bytes(pki.private_key_pem(agent_key))
    made = _openssl(
        "req",
        "-new",
        "-key",
        "key.pem",
        "-subj",
        "/CN=anything",
        "-sha256",
        "-out",
        "req.pem",
        cwd=tmp_path,
    )
    assert made.returncode == 0, made.stderr
    csr = pki.validate_csr((tmp_path / "req.pem").read_bytes())
    assert csr.subject.rfc4514_string() == "CN=anything"


def test_sha1_csr_made_by_openssl_is_rejected(tmp_path: Path, agent_key: rsa.RSAPrivateKey) -> None:
    (tmp_path / "key.pem").write_bytes(pki.private_key_pem(agent_key))
    made = _openssl(
        "req", "-new", "-key", "key.pem", "-subj", "/", "-sha1", "-out", "req.pem", cwd=tmp_path
    )
    assert made.returncode == 0, made.stderr
    with pytest.raises(pki.CsrSignatureInvalid, match="sha1"):
        pki.validate_csr((tmp_path / "req.pem").read_bytes())


# --------------------------------------------------------------------------- identity


def test_agent_identity_round_trip(agent_cert: x509.Certificate) -> None:
    identity = pki.agent_identity(agent_cert)
    assert identity == pki.AgentIdentity(
        tenant_id=TENANT,
        agent_id=AGENT,
        serial=agent_cert.serial_number,
        not_after=NOW + dt.timedelta(days=180),
    )
    # Also after a trip through DER, as the CA sees it from the TLS handshake.
    der = agent_cert.public_bytes(serialization.Encoding.DER)
    assert pki.agent_identity(x509.load_der_x509_certificate(der)) == identity


def _shaped(
    ca: tuple[x509.Certificate, pki.PrivateKey],
    *,
    subject: list[x509.NameAttribute[str]],
    san: Sequence[x509.GeneralName] | None,
    eku: list[x509.ObjectIdentifier] | None,
    is_ca: bool = False,
) -> x509.Certificate:
    key = pki.new_ec_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(ca[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return builder.sign(ca[1], hashes.SHA256())


_CN = NameOID.COMMON_NAME
_URI = x509.UniformResourceIdentifier(f"urn:pta:agent:{AGENT}")
_CLIENT = [ExtendedKeyUsageOID.CLIENT_AUTH]
BAD_SHAPES = {
    "two subject attributes": (
        [x509.NameAttribute(_CN, TENANT), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x")],
        [_URI],
        _CLIENT,
        False,
    ),
    "subject not a uuid": ([x509.NameAttribute(_CN, "contoso")], [_URI], _CLIENT, False),
    "subject uppercase uuid": ([x509.NameAttribute(_CN, TENANT.upper())], [_URI], _CLIENT, False),
    "subject is O not CN": (
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, TENANT)],
        [_URI],
        _CLIENT,
        False,
    ),
    "no san": ([x509.NameAttribute(_CN, TENANT)], None, _CLIENT, False),
    "dns san": ([x509.NameAttribute(_CN, TENANT)], [x509.DNSName("agent.test")], _CLIENT, False),
    "two uris": (
        [x509.NameAttribute(_CN, TENANT)],
        [_URI, x509.UniformResourceIdentifier(f"urn:pta:agent:{OTHER_TENANT}")],
        _CLIENT,
        False,
    ),
    "other uri scheme": (
        [x509.NameAttribute(_CN, TENANT)],
        [x509.UniformResourceIdentifier(f"https://agent/{AGENT}")],
        _CLIENT,
        False,
    ),
    "agent id not a uuid": (
        [x509.NameAttribute(_CN, TENANT)],
        [x509.UniformResourceIdentifier("urn:pta:agent:*")],
        _CLIENT,
        False,
    ),
    "no eku": ([x509.NameAttribute(_CN, TENANT)], [_URI], None, False),
    "server eku only": (
        [x509.NameAttribute(_CN, TENANT)],
        [_URI],
        [ExtendedKeyUsageOID.SERVER_AUTH],
        False,
    ),
    "is a ca": ([x509.NameAttribute(_CN, TENANT)], [_URI], _CLIENT, True),
}


@pytest.mark.parametrize("case", sorted(BAD_SHAPES))
def test_agent_identity_rejects_other_shapes(
    case: str, pta_ca: tuple[x509.Certificate, pki.PrivateKey]
) -> None:
    subject, san, eku, is_ca = BAD_SHAPES[case]
    cert = _shaped(pta_ca, subject=subject, san=san, eku=eku, is_ca=is_ca)
    with pytest.raises(pki.AgentIdentityInvalid):
        pki.agent_identity(cert)


def test_agent_identity_rejects_ca_and_server_certs(
    tls_ca: tuple[x509.Certificate, pki.PrivateKey],
) -> None:
    server, _ = pki.issue_server_cert(*tls_ca, hostnames=["x"], ips=[], now=NOW, lifetime_days=1)
    for cert in (tls_ca[0], server):
        with pytest.raises(pki.CertificateRejected):
            pki.agent_identity(cert)


def test_spki_kid(agent_key: rsa.RSAPrivateKey, agent_cert: x509.Certificate) -> None:
    der = agent_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    expected = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
    kid = pki.spki_sha256_kid(agent_key.public_key())
    assert kid == expected
    assert len(kid) == 43 and "=" not in kid and "+" not in kid and "/" not in kid
    assert pki.spki_sha256_kid(agent_cert.public_key()) == kid


# --------------------------------------------------------------------------- CSR vetting


@pytest.fixture(scope="module")
def good_csr(agent_key: rsa.RSAPrivateKey) -> bytes:
    return pki.csr_pem(pki.new_agent_csr(agent_key))


def test_validate_csr_accepts_agent_csr(good_csr: bytes, agent_key: rsa.RSAPrivateKey) -> None:
    csr = pki.validate_csr(good_csr)
    assert pki.spki_der(csr.public_key()) == pki.spki_der(agent_key.public_key())
    # Surrounding whitespace (a trailing newline from a form or a file) is fine.
    pki.validate_csr(b"\n" + good_csr + b"\r\n")


def _tampered(pem: bytes) -> bytes:
    der = bytearray(x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # the last byte belongs to the signature BIT STRING
    return _pem("CERTIFICATE REQUEST", bytes(der))


def _subject_tampered(pem: bytes) -> bytes:
    """Same length, one byte of the signed subject changed: the signature no longer fits."""
    csr = x509.load_pem_x509_csr(pem)
    der = csr.public_bytes(serialization.Encoding.DER)
    return _pem("CERTIFICATE REQUEST", der.replace(b"agent-a", b"agent-b"))


@pytest.fixture(scope="module")
def csr_cases(agent_key: rsa.RSAPrivateKey) -> dict[str, tuple[bytes, type[pki.CsrRejected]]]:
    small = rsa.generate_private_key(65537, 1024)  # noqa: S505 - a weak key is the test input
    exponent3 = rsa.generate_private_key(public_exponent=3, key_size=2048)
    named = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agent-a")])
    good = pki.csr_pem(pki.new_agent_csr(agent_key))
    # The body is base64 of junk between correct armour lines.
    junk = b"-----BEGIN CERTIFICATE REQUEST-----\nTm90IGEgQ1NS\n-----END CERTIFICATE REQUEST-----\n"
    return {
        "empty": (b"", pki.CsrNotPem),
        "garbage": (b"hello, CA", pki.CsrNotPem),
        "binary": (os.urandom(300), pki.CsrNotPem),
        "der instead of pem": (
            x509.load_pem_x509_csr(good).public_bytes(serialization.Encoding.DER),
            pki.CsrNotPem,
        ),
        "junk inside armour": (junk, pki.CsrNotPem),
        "text before the block": (b"my csr:\n" + good, pki.CsrNotPem),
        "two csrs": (good + good, pki.CsrNotPem),
        "certificate instead": (
            pki.certificate_pem(pki.make_ca("x", now=NOW, lifetime_days=1)[0]),
            pki.CsrNotPem,
        ),
        "oversize": (good + b" " * 8192, pki.CsrTooLarge),
        "tampered signature": (_tampered(good), pki.CsrSignatureInvalid),
        "tampered subject": (
            _subject_tampered(_csr(agent_key, subject=named)),
            pki.CsrSignatureInvalid,
        ),
        "rsa 1024": (pki.csr_pem(pki.new_agent_csr(small)), pki.CsrKeySizeRejected),
        "exponent 3": (pki.csr_pem(pki.new_agent_csr(exponent3)), pki.CsrKeyExponentRejected),
        "ec p-256": (_csr(pki.new_ec_key()), pki.CsrKeyNotRsa),
        "san extension": (
            _csr(
                agent_key,
                lambda b: b.add_extension(
                    x509.SubjectAlternativeName(
                        [x509.UniformResourceIdentifier(f"urn:pta:agent:{AGENT}")]
                    ),
                    critical=False,
                ),
            ),
            pki.CsrRequestsExtensions,
        ),
        "basic constraints ca": (
            _csr(
                agent_key,
                lambda b: b.add_extension(
                    x509.BasicConstraints(ca=True, path_length=None), critical=True
                ),
            ),
            pki.CsrRequestsExtensions,
        ),
        "challenge password": (
            _csr(
                agent_key,
                lambda b: b.add_attribute(x509.oid.AttributeOID.CHALLENGE_PASSWORD, b"hunter2"),
            ),
            pki.CsrRequestsExtensions,
        ),
    }


CSR_CASES = [
    "empty", "garbage", "binary", "der instead of pem", "junk inside armour",
    "text before the block", "two csrs", "certificate instead", "oversize",
    "tampered signature", "tampered subject", "rsa 1024", "exponent 3", "ec p-256",
    "san extension", "basic constraints ca", "challenge password",
]  # fmt: skip


@pytest.mark.parametrize("case", CSR_CASES)
def test_validate_csr_rejects(
    case: str, csr_cases: dict[str, tuple[bytes, type[pki.CsrRejected]]]
) -> None:
    data, expected = csr_cases[case]
    with pytest.raises(expected) as caught:
        pki.validate_csr(data)
    message = str(caught.value)
    assert message.startswith((expected.__doc__ or "").strip().splitlines()[0])
    # No input or key material is echoed back (docs/design.md §7).
    assert "hunter2" not in message and len(message) < 200
    for line in data.splitlines():
        if len(line) >= 8 and not line.startswith(b"-----"):
            assert line[:8].decode("latin-1") not in message


def test_validate_csr_rejects_rsa_above_4096() -> None:
    # 4104 bits: the smallest size above the limit that is quick enough to generate.
    big = rsa.generate_private_key(public_exponent=65537, key_size=4104)
    with pytest.raises(pki.CsrKeySizeRejected, match="4104 bits"):
        pki.validate_csr(pki.csr_pem(pki.new_agent_csr(big)), max_bytes=16384)


def test_validate_csr_size_limit_is_configurable(good_csr: bytes) -> None:
    with pytest.raises(pki.CsrTooLarge):
        pki.validate_csr(good_csr, max_bytes=len(good_csr) - 1)
    pki.validate_csr(good_csr, max_bytes=len(good_csr))


def test_sign_agent_csr_vets_the_csr_again(
    pta_ca: tuple[x509.Certificate, pki.PrivateKey],
) -> None:
    ec_csr = x509.load_pem_x509_csr(_csr(pki.new_ec_key()))
    with pytest.raises(pki.CsrKeyNotRsa):
        pki.sign_agent_csr(
            ec_csr,
            issuer_cert=pta_ca[0],
            issuer_key=pta_ca[1],
            tenant_id=TENANT,
            agent_id=AGENT,
            now=NOW,
            lifetime_days=1,
        )


@pytest.mark.parametrize(
    "bad_id",
    ["", "contoso", TENANT.upper(), "{" + TENANT + "}", TENANT.replace("-", ""),
     "urn:uuid:" + TENANT, TENANT + "\n", TENANT[:-1]],
)  # fmt: skip
@pytest.mark.parametrize("field", ["tenant_id", "agent_id"])
def test_sign_agent_csr_requires_canonical_uuids(
    field: str,
    bad_id: str,
    pta_ca: tuple[x509.Certificate, pki.PrivateKey],
    agent_key: rsa.RSAPrivateKey,
) -> None:
    ids = {"tenant_id": TENANT, "agent_id": AGENT, field: bad_id}
    with pytest.raises(pki.IdentifierInvalid):
        _sign(pta_ca, agent_key, tenant_id=ids["tenant_id"], agent_id=ids["agent_id"])


def test_sign_agent_csr_refuses_unusable_issuers(
    pta_ca: tuple[x509.Certificate, pki.PrivateKey],
    tls_ca: tuple[x509.Certificate, pki.PrivateKey],
    agent_key: rsa.RSAPrivateKey,
    agent_cert: x509.Certificate,
) -> None:
    short_ca = pki.make_ca("Short CA", now=NOW, lifetime_days=30)
    with pytest.raises(pki.IssuerUnusable, match="rotate the CA"):
        _sign(short_ca, agent_key, lifetime_days=180)
    with pytest.raises(pki.IssuerUnusable, match="does not belong"):
        _sign((pta_ca[0], tls_ca[1]), agent_key)
    with pytest.raises(pki.IssuerUnusable, match="not a CA"):
        _sign((agent_cert, agent_key), agent_key)


def test_sign_agent_csr_refuses_bad_arguments(
    pta_ca: tuple[x509.Certificate, pki.PrivateKey], agent_key: rsa.RSAPrivateKey
) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        _sign(pta_ca, agent_key, now=NOW.replace(tzinfo=None))
    with pytest.raises(ValueError, match="positive"):
        _sign(pta_ca, agent_key, lifetime_days=0)
    for serial in (0, -1, 2**159):
        with pytest.raises(ValueError, match="serial"):
            pki.sign_agent_csr(
                pki.new_agent_csr(agent_key),
                issuer_cert=pta_ca[0],
                issuer_key=pta_ca[1],
                tenant_id=TENANT,
                agent_id=AGENT,
                now=NOW,
                lifetime_days=1,
                serial=serial,
            )


def test_now_in_another_zone_is_the_same_instant(
    pta_ca: tuple[x509.Certificate, pki.PrivateKey], agent_key: rsa.RSAPrivateKey
) -> None:
    paris = dt.timezone(dt.timedelta(hours=2))
    cert = _sign(pta_ca, agent_key, now=NOW.astimezone(paris))
    assert cert.not_valid_after_utc == NOW + dt.timedelta(days=180)


# --------------------------------------------------------------------------- verification


def test_verify_issued_by_accepts_within_validity_and_skew(
    pta_ca: tuple[x509.Certificate, pki.PrivateKey], agent_cert: x509.Certificate
) -> None:
    pki.verify_issued_by(agent_cert, pta_ca[0], now=NOW)
    pki.verify_issued_by(agent_cert, pta_ca[0], now=NOW - dt.timedelta(minutes=4))
    pki.verify_issued_by(agent_cert, pta_ca[0], now=NOW + dt.timedelta(days=180))


def test_verify_issued_by_rejects_other_ca(
    tls_ca: tuple[x509.Certificate, pki.PrivateKey], agent_cert: x509.Certificate
) -> None:
    with pytest.raises(pki.CertificateUntrusted, match="Issuer"):
        pki.verify_issued_by(agent_cert, tls_ca[0], now=NOW)
    # A CA with the very same name but another key: the signature decides.
    impostor, _ = pki.make_ca("PTA CA", now=NOW, lifetime_days=3650)
    with pytest.raises(pki.CertificateUntrusted, match="signature"):
        pki.verify_issued_by(agent_cert, impostor, now=NOW)


def test_verify_issued_by_rejects_expired_and_early(
    pta_ca: tuple[x509.Certificate, pki.PrivateKey], agent_cert: x509.Certificate
) -> None:
    later = NOW + dt.timedelta(days=180, seconds=1)
    with pytest.raises(pki.CertificateExpired, match="certificate expired"):
        pki.verify_issued_by(agent_cert, pta_ca[0], now=later)
    with pytest.raises(pki.CertificateNotYetValid):
        pki.verify_issued_by(agent_cert, pta_ca[0], now=NOW - dt.timedelta(minutes=6))
    assert issubclass(pki.CertificateExpired, pki.CertificateRejected)


def test_verify_issued_by_rejects_expired_ca(agent_key: rsa.RSAPrivateKey) -> None:
    ca = pki.make_ca("Old CA", now=NOW, lifetime_days=10)
    cert = _sign(ca, agent_key, lifetime_days=5)
    with pytest.raises(pki.CertificateExpired, match="issuing CA"):
        pki.verify_issued_by(cert, ca[0], now=NOW + dt.timedelta(days=11))


def test_verify_issued_by_rejects_non_ca_issuer(
    agent_key: rsa.RSAPrivateKey, agent_cert: x509.Certificate
) -> None:
    # An agent signing a "certificate" with its own key, naming itself as issuer.
    forged = _shaped(
        (agent_cert, agent_key), subject=[x509.NameAttribute(_CN, TENANT)], san=[_URI], eku=_CLIENT
    )
    with pytest.raises(pki.CertificateUntrusted, match="not a CA"):
        pki.verify_issued_by(forged, agent_cert, now=NOW)


# --------------------------------------------------------------------------- CRL


def test_crl_lists_revoked_serials_and_verifies(
    tmp_path: Path,
    pta_ca: tuple[x509.Certificate, pki.PrivateKey],
    tls_ca: tuple[x509.Certificate, pki.PrivateKey],
    agent_cert: x509.Certificate,
) -> None:
    revoked_at = NOW - dt.timedelta(hours=1)
    crl = pki.build_crl(
        *pta_ca,
        [(agent_cert.serial_number, revoked_at), (42, NOW), (42, NOW - dt.timedelta(days=1))],
        now=NOW,
    )
    entry = crl.get_revoked_certificate_by_serial_number(agent_cert.serial_number)
    assert entry is not None and entry.revocation_date_utc == revoked_at
    duplicate = crl.get_revoked_certificate_by_serial_number(42)
    assert duplicate is not None and duplicate.revocation_date_utc == NOW - dt.timedelta(days=1)
    assert len(crl) == 2
    assert crl.issuer == pta_ca[0].subject
    assert crl.last_update_utc == NOW
    assert crl.next_update_utc == NOW + dt.timedelta(hours=24)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == int(
        NOW.timestamp()
    )
    crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    assert crl.is_signature_valid(_ec_public(pta_ca[0]))
    assert not crl.is_signature_valid(_ec_public(tls_ca[0]))

    der = pki.crl_der(crl)
    assert x509.load_der_x509_crl(der) == crl

    # openssl: the CRL verifies, and chain verification with it says "revoked".
    (tmp_path / "ca.pem").write_bytes(pki.certificate_pem(pta_ca[0]))
    (tmp_path / "agent.pem").write_bytes(pki.certificate_pem(agent_cert))
    (tmp_path / "pta.crl").write_bytes(der)
    checked = _openssl(
        "crl", "-inform", "DER", "-in", "pta.crl", "-CAfile", "ca.pem", "-noout", cwd=tmp_path
    )
    assert checked.returncode == 0 and "verify OK" in checked.stdout + checked.stderr
    (tmp_path / "crl.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    verdict = _openssl(
        "verify",
        "-crl_check",
        "-CRLfile",
        "crl.pem",
        "-attime",
        _at(NOW),
        "-CAfile",
        "ca.pem",
        "agent.pem",
        cwd=tmp_path,
    )
    assert verdict.returncode != 0
    assert "certificate revoked" in verdict.stdout + verdict.stderr


def test_empty_crl_and_options(pta_ca: tuple[x509.Certificate, pki.PrivateKey]) -> None:
    crl = pki.build_crl(*pta_ca, [], now=NOW, next_update_hours=1, crl_number=7)
    assert len(crl) == 0
    assert crl.next_update_utc == NOW + dt.timedelta(hours=1)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 7
    with pytest.raises(pki.IssuerUnusable):
        pki.build_crl(pta_ca[0], pki.new_ec_key(), [], now=NOW)
    with pytest.raises(ValueError):
        pki.build_crl(*pta_ca, [], now=NOW, next_update_hours=0)


def test_rsa_ca_signs_verifiable_crl() -> None:
    ca = pki.make_ca("RSA CA", now=NOW, lifetime_days=10, key=pki.new_rsa_key())
    crl = pki.build_crl(*ca, [(5, NOW)], now=NOW)
    public = ca[0].public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    public.verify(crl.signature, crl.tbs_certlist_bytes, padding.PKCS1v15(), hashes.SHA256())


# --------------------------------------------------------------------------- keys and files


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A permissive umask: the key file must still come out 0600."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("open_umask")
def test_write_private_key_is_0600_and_round_trips(
    tmp_path: Path, agent_key: rsa.RSAPrivateKey
) -> None:
    path = tmp_path / "agent.key"
    pki.write_private_key(path, agent_key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = pki.read_private_key(path)
    assert pki.spki_der(loaded.public_key()) == pki.spki_der(agent_key.public_key())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.key"]  # no temp file left


@pytest.mark.usefixtures("open_umask")
def test_write_private_key_refuses_to_overwrite(
    tmp_path: Path, agent_key: rsa.RSAPrivateKey
) -> None:
    path = tmp_path / "agent.key"
    pki.write_private_key(path, agent_key)
    before = path.read_bytes()
    with pytest.raises(pki.KeyFileExists):
        pki.write_private_key(path, pki.new_ec_key())
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.key"]
    # A symlink planted at the path is not followed either.
    link = tmp_path / "planted.key"
    link.symlink_to(tmp_path / "elsewhere.key")
    with pytest.raises(pki.KeyFileExists):
        pki.write_private_key(link, agent_key)
    assert not (tmp_path / "elsewhere.key").exists()


@pytest.mark.usefixtures("open_umask")
def test_write_private_key_overwrite_rotates_atomically(
    tmp_path: Path, agent_key: rsa.RSAPrivateKey
) -> None:
    path = tmp_path / "agent.key"
    pki.write_private_key(path, agent_key)
    new_key = pki.new_ec_key()
    pki.write_private_key(path, new_key, overwrite=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert pki.spki_der(pki.read_private_key(path).public_key()) == pki.spki_der(
        new_key.public_key()
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.key"]


def test_write_private_key_into_missing_directory_fails_cleanly(
    tmp_path: Path, agent_key: rsa.RSAPrivateKey
) -> None:
    with pytest.raises(FileNotFoundError):
        pki.write_private_key(tmp_path / "missing" / "agent.key", agent_key)


def test_read_private_key_refuses_exposed_file(
    tmp_path: Path, agent_key: rsa.RSAPrivateKey
) -> None:
    path = tmp_path / "agent.key"
    pki.write_private_key(path, agent_key)
    path.chmod(0o644)
    with pytest.raises(pki.KeyFileExposed, match="0644"):
        pki.read_private_key(path)


def test_pem_helpers(
    pta_ca: tuple[x509.Certificate, pki.PrivateKey], agent_cert: x509.Certificate
) -> None:
    chain = pki.certificates_pem([agent_cert, pta_ca[0]])
    assert pki.load_certificates_pem(chain) == [agent_cert, pta_ca[0]]
    assert pki.load_certificate_pem(pki.certificate_pem(agent_cert)) == agent_cert
    with pytest.raises(pki.PemInvalid, match="found 2"):
        pki.load_certificate_pem(chain)
    with pytest.raises(pki.PemInvalid):
        pki.load_certificates_pem(b"nothing here")
    secret_looking = b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n"
    with pytest.raises(pki.PemInvalid) as caught:
        pki.load_private_key_pem(secret_looking)
    assert "c2VjcmV0" not in str(caught.value)


def test_new_rsa_key_sizes() -> None:
    with pytest.raises(ValueError):
        pki.new_rsa_key(1024)
    assert pki.new_rsa_key().key_size == 2048


def test_error_messages_default_to_docstring() -> None:
    assert (
        str(pki.CsrKeyNotRsa()) == "The certificate signing request must carry an RSA public key."
    )
    assert str(pki.CsrKeyNotRsa("Got an EC key.")).endswith("Got an EC key.")
    assert issubclass(pki.CsrKeyNotRsa, pki.CsrRejected)
    assert issubclass(pki.CsrRejected, pki.PkiError)


def test_kid_agrees_with_the_envelope(agent_key: rsa.RSAPrivateKey) -> None:
    """The CA stores this kid and the STS addresses wrapped keys by envelope.kid_for."""
    from common import envelope

    assert pki.spki_sha256_kid(agent_key.public_key()) == envelope.kid_for(agent_key.public_key())
