"""Certificate authority helpers shared by the CA service, the agent and the stack launcher.

What: key generation, PEM encoding, the two self-signed CAs of DESIGN.md (the "PTA CA",
which signs agent client certificates and nothing else, and the "service TLS CA", which
signs the STS and CA HTTPS server certificates), CSR vetting, agent certificate issuance,
agent identity parsing, issuer verification and CRLs.

Why here: the agent builds CSRs and reads its certificate, the CA vets and signs them and
the launcher makes the CAs; one module keeps the certificate profile in one place.

Rules (STYLE.md section 3): pure functions, no clock reads (every caller passes an aware
``now``), no module-level keys, no I/O except the two functions that are about key files
(``write_private_key``, ``read_private_key``). Errors derive from ``PkiError``; a class
docstring is its default message and no message ever carries key material.

Choices not fixed by DESIGN.md:
- CA and server keys default to ECDSA P-256 (fast to make, 128-bit strength); agent keys
  are RSA because the envelope wraps content keys with RSA-OAEP (DESIGN.md wire formats).
- ``not_before`` is backdated by ``CLOCK_SKEW`` (5 minutes) on every certificate so that a
  peer whose clock is slightly behind accepts a certificate issued a moment ago.
- A certificate that would outlive its issuer is refused (``IssuerUnusable``) rather than
  silently shortened: a shortened certificate would hide the need to rotate the CA.
- The default CRL number is ``now`` in Unix seconds: monotonic across the stateless CA
  replicas without shared state (RFC 5280 section 5.2.3 asks only that it increase).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import ipaddress
import os
import secrets
import stat
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.encoding import b64url, is_canonical_uuid

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
"""Private key types this project uses: RSA for agents, EC P-256 for CAs and servers."""

CLOCK_SKEW = dt.timedelta(minutes=5)
"""How far ``not_before`` is backdated on every certificate issued here."""

AGENT_URI_PREFIX = "urn:pta:agent:"
"""SAN URI prefix of agent certificates (DESIGN.md flow 1 step 4)."""

MIN_AGENT_RSA_BITS = 2048
MAX_AGENT_RSA_BITS = 4096
_MIN_RSA_EXPONENT = 65537
_MAX_SERIAL = 1 << 159  # RFC 5280 section 4.1.2.2: positive, at most 20 octets
_ALLOWED_CSR_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)
_PEM_CSR_BEGIN = b"-----BEGIN CERTIFICATE REQUEST-----"
_PEM_CSR_END = b"-----END CERTIFICATE REQUEST-----"


# --------------------------------------------------------------------------- errors


class PkiError(Exception):
    """A certificate operation failed."""

    def __init__(self, detail: str = "") -> None:
        self.detail = detail
        default = (self.__doc__ or type(self).__name__).strip().splitlines()[0]
        super().__init__(f"{default} {detail}".strip())


class PemInvalid(PkiError):
    """The data is not the expected PEM object."""


class KeyFileExists(PkiError):
    """The private key file already exists; refusing to overwrite it."""


class KeyFileExposed(PkiError):
    """The private key file is readable by other users; make it mode 0600."""


class IdentifierInvalid(PkiError):
    """A tenant or agent id is not a canonical lowercase UUID."""


class IssuerUnusable(PkiError):
    """The issuing CA cannot sign this certificate."""


class CsrRejected(PkiError):
    """The certificate signing request was rejected."""


class CsrNotPem(CsrRejected):
    """The certificate signing request is not a single well-formed PEM CSR."""


class CsrTooLarge(CsrRejected):
    """The certificate signing request is too large."""


class CsrSignatureInvalid(CsrRejected):
    """The certificate signing request's signature does not verify with its own key."""


class CsrKeyNotRsa(CsrRejected):
    """The certificate signing request must carry an RSA public key."""


class CsrKeySizeRejected(CsrRejected):
    """The certificate signing request's RSA key size is outside 2048 to 4096 bits."""


class CsrKeyExponentRejected(CsrRejected):
    """The certificate signing request's RSA public exponent must be odd and at least 65537."""


class CsrRequestsExtensions(CsrRejected):
    """The certificate signing request asks for extensions or attributes; agents ask for none."""


class CertificateRejected(PkiError):
    """The certificate was rejected."""


class CertificateUntrusted(CertificateRejected):
    """The certificate was not issued by the trusted CA."""


class CertificateExpired(CertificateRejected):
    """The certificate has expired."""


class CertificateNotYetValid(CertificateRejected):
    """The certificate is not valid yet."""


class AgentIdentityInvalid(CertificateRejected):
    """The certificate does not have the shape of a PTA agent certificate."""


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class AgentIdentity:
    """Who an agent certificate speaks for (DESIGN.md flow 2 step 2)."""

    tenant_id: str
    agent_id: str
    serial: int
    not_after: dt.datetime


# --------------------------------------------------------------------------- keys and PEM


def new_rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    """Generate an RSA key for an agent (DESIGN.md flow 1 step 2; exponent 65537).

    Raises ValueError when ``bits`` is outside the range the CA accepts.
    """
    if not MIN_AGENT_RSA_BITS <= bits <= MAX_AGENT_RSA_BITS:
        raise ValueError(f"RSA key size must be {MIN_AGENT_RSA_BITS} to {MAX_AGENT_RSA_BITS}")
    return rsa.generate_private_key(public_exponent=_MIN_RSA_EXPONENT, key_size=bits)


def new_ec_key() -> ec.EllipticCurvePrivateKey:
    """Generate an ECDSA P-256 key, used for the CAs and the HTTPS server certificates."""
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key: PrivateKey) -> bytes:
    """Encode a private key as unencrypted PKCS#8 PEM (file mode protects it at rest)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key_pem(data: bytes) -> PrivateKey:
    """Decode an unencrypted PEM private key of a type this project uses.

    Raises PemInvalid (without echoing the data) when it is not one.
    """
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # The parser's message could quote the input; keep it out (security rules).
        raise PemInvalid("Expected an unencrypted PEM private key.") from exc
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise PemInvalid(f"Unsupported private key type {type(key).__name__}.")
    return key


def spki_der(public_key: PublicKeyTypes) -> bytes:
    """DER SubjectPublicKeyInfo of a public key: what the CA stores for an agent."""
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def spki_sha256_kid(public_key: PublicKeyTypes) -> str:
    """Key id of DESIGN.md: base64url, unpadded, of SHA-256 over the DER SPKI."""
    digest = hashlib.sha256(spki_der(public_key)).digest()
    return b64url(digest)


def certificate_pem(cert: x509.Certificate) -> bytes:
    """Encode one certificate as PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


def certificates_pem(certs: Iterable[x509.Certificate]) -> bytes:
    """Encode a chain or bundle as concatenated PEM, leaf first as given."""
    return b"".join(certificate_pem(cert) for cert in certs)


def load_certificate_pem(data: bytes) -> x509.Certificate:
    """Decode exactly one PEM certificate.

    Raises PemInvalid when the data holds none or more than one.
    """
    certs = load_certificates_pem(data)
    if len(certs) != 1:
        raise PemInvalid(f"Expected one certificate, found {len(certs)}.")
    return certs[0]


def load_certificates_pem(data: bytes) -> list[x509.Certificate]:
    """Decode a PEM chain or CA bundle (one or more certificates, in order).

    Raises PemInvalid when there is no certificate or one is malformed.
    """
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise PemInvalid("Expected one or more PEM certificates.") from exc
    return certs


def csr_pem(csr: x509.CertificateSigningRequest) -> bytes:
    """Encode a CSR as PEM, the form the agent posts to the CA."""
    return csr.public_bytes(serialization.Encoding.PEM)


def new_agent_csr(key: rsa.RSAPrivateKey) -> x509.CertificateSigningRequest:
    """Build the CSR an agent sends: empty subject, no extensions, no attributes.

    The CA decides subject and SAN (DESIGN.md flow 1 step 4), so the agent asks for
    nothing; the CSR only proves possession of the key.
    """
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )


def write_private_key(
    path: str | os.PathLike[str], key: PrivateKey, *, overwrite: bool = False
) -> None:
    """Write a private key as PEM with mode 0600, atomically: the only key writer.

    The key goes to a fresh temporary file in the same directory, created with
    ``O_CREAT | O_EXCL`` and mode 0600 (so it is never readable by others, not even
    briefly), is fsynced, then published under ``path``. By default publication uses
    ``link()``, which fails if ``path`` exists, so an existing key is never clobbered;
    ``overwrite=True`` (key rotation at renewal) uses ``rename()``, which replaces it
    atomically: readers see the old key or the new one, never a partial file.

    Raises KeyFileExists when ``path`` exists and ``overwrite`` is false; OSError for
    other file system failures. The temporary file is removed on any failure.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    data = private_key_pem(key)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)  # the umask can only narrow; make it exact
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)  # atomic create-if-absent, unlike rename()
            except FileExistsError as exc:
                raise KeyFileExists(str(target)) from exc
            os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(target.parent)


def read_private_key(path: str | os.PathLike[str]) -> PrivateKey:
    """Read a private key file written by ``write_private_key``.

    Raises KeyFileExposed when group or others may access the file (like ssh does),
    PemInvalid when it holds no usable key, OSError when it cannot be read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if stat.S_IMODE(mode) & 0o077:
            raise KeyFileExposed(f"{os.fspath(path)} has mode {stat.S_IMODE(mode):04o}.")
        data = handle.read()
    return load_private_key_pem(data)


def _fsync_directory(directory: Path) -> None:
    """Persist a rename: the directory entry must reach the disk too."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- issuing


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
    now = _utc(now)
    if not common_name:
        raise ValueError("CA common name must not be empty")
    lifetime = _lifetime(lifetime_days)
    key = key if key is not None else new_ec_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_random_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(ski, critical=False)
        # RFC 5280 section 4.2.1.1 lets a self-signed CA omit the AKI; we keep it for
        # tools that build chains by key id.
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
            critical=False,
        )
        .sign(key, _hash_for(key))
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
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Issue an HTTPS server certificate (EC P-256) for the STS or the CA.

    SANs carry every host name and IP (clients match SANs only, RFC 6125 section 6.4.4);
    EKU serverAuth. Raises ValueError when no name is given or an IP does not parse,
    IssuerUnusable when the CA cannot sign it (not a CA, wrong key, expires too soon).
    """
    now = _utc(now)
    lifetime = _lifetime(lifetime_days)
    if not hostnames and not ips:
        raise ValueError("a server certificate needs at least one host name or IP")
    for host in hostnames:
        if not host or not host.isascii():
            raise ValueError(f"host name {host!r} must be non-empty ASCII (IDNA A-label)")
    addresses = [ipaddress.ip_address(ip) for ip in ips]
    not_after = now + lifetime
    _check_issuer(ca_cert, ca_key, now=now, not_after=not_after)
    key = new_ec_key()
    names: list[x509.GeneralName] = [x509.DNSName(host) for host in hostnames]
    names += [x509.IPAddress(address) for address in addresses]
    first = hostnames[0] if hostnames else str(addresses[0])
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, first)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(_random_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # ECDHE-ECDSA needs digitalSignature only (RFC 5480 section 3).
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(_authority_key_id(ca_cert), critical=False)
        .sign(ca_key, _hash_for(ca_key))
    )
    return cert, key


def validate_csr(pem: bytes, *, max_bytes: int = 8192) -> x509.CertificateSigningRequest:
    """Vet an agent's CSR before anything else looks at it (DESIGN.md flow 1 step 4).

    Accepts exactly one PEM CSR, at most ``max_bytes`` long, signed by its own key
    (proof of possession) with SHA-256/384/512, carrying an RSA key of 2048 to 4096 bits
    with an odd exponent of at least 65537, and asking for nothing: no extensions (no
    SAN: the CA alone names the agent) and no attributes. The subject is ignored.

    Raises a CsrRejected subclass: CsrTooLarge, CsrNotPem, CsrKeyNotRsa,
    CsrKeySizeRejected, CsrKeyExponentRejected, CsrSignatureInvalid, CsrRequestsExtensions.
    """
    if not isinstance(pem, bytes):
        raise CsrNotPem("Expected bytes.")
    if len(pem) > max_bytes:
        # Checked before parsing so an oversize body costs nothing (security rules).
        raise CsrTooLarge(f"{len(pem)} bytes, the limit is {max_bytes}.")
    body = pem.strip()
    if (
        not body.startswith(_PEM_CSR_BEGIN)
        or not body.endswith(_PEM_CSR_END)
        or body.count(b"-----BEGIN") != 1
    ):
        raise CsrNotPem("Send exactly one PEM block labelled CERTIFICATE REQUEST.")
    try:
        csr = x509.load_pem_x509_csr(body)
    except (ValueError, x509.InvalidVersion) as exc:
        raise CsrNotPem("The PEM block does not decode to a PKCS#10 request.") from exc
    check_agent_csr(csr)
    return csr


def check_agent_csr(csr: x509.CertificateSigningRequest) -> None:
    """The checks of ``validate_csr`` on a parsed CSR; ``sign_agent_csr`` repeats them.

    Raises the CsrRejected subclasses listed in ``validate_csr`` (except CsrTooLarge).
    """
    try:
        public_key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CsrKeyNotRsa("The key algorithm is not supported.") from exc
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise CsrKeyNotRsa(f"Got {_key_kind(public_key)}.")
    bits = public_key.key_size
    if not MIN_AGENT_RSA_BITS <= bits <= MAX_AGENT_RSA_BITS:
        raise CsrKeySizeRejected(f"Got {bits} bits.")
    exponent = public_key.public_numbers().e
    if exponent < _MIN_RSA_EXPONENT or exponent % 2 == 0:
        raise CsrKeyExponentRejected(f"Got {exponent}.")
    algorithm = csr.signature_hash_algorithm
    if not isinstance(algorithm, _ALLOWED_CSR_HASHES):
        name = algorithm.name if algorithm is not None else "none"
        raise CsrSignatureInvalid(f"Hash {name} is not allowed; use SHA-256.")
    try:
        is_valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CsrSignatureInvalid() from exc
    if not is_valid:
        raise CsrSignatureInvalid()
    try:
        extensions = list(csr.extensions)
    except ValueError as exc:  # duplicate or undecodable extensions
        raise CsrRequestsExtensions("The extension request does not decode.") from exc
    if extensions:
        names = ", ".join(_oid_name(ext.oid) for ext in extensions)
        raise CsrRequestsExtensions(f"Found: {names}.")
    attributes = list(csr.attributes)
    if attributes:
        names = ", ".join(_oid_name(attribute.oid) for attribute in attributes)
        raise CsrRequestsExtensions(f"Found attributes: {names}.")


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
) -> x509.Certificate:
    """Sign an agent's client certificate with the PTA CA (DESIGN.md flow 1 step 4).

    Subject exactly ``CN=<tenant id>`` (the CSR's subject is ignored), SAN URI
    ``urn:pta:agent:<agent id>``, EKU clientAuth only, KeyUsage digitalSignature (TLS
    client auth) and keyEncipherment (the envelope wraps content keys with RSA-OAEP),
    BasicConstraints ca=False, AKI/SKI, random 159-bit serial, valid from
    ``now - CLOCK_SKEW`` to ``now + lifetime_days``. The CSR is vetted again here so no
    caller can sign an unchecked request.

    Raises IdentifierInvalid (ids not canonical lowercase UUIDs), a CsrRejected subclass,
    IssuerUnusable (issuer not a CA, key not its own, or expiring before the new
    certificate), ValueError (serial out of range, naive ``now``, bad lifetime).
    """
    now = _utc(now)
    lifetime = _lifetime(lifetime_days)
    tenant = _canonical_uuid(tenant_id, "tenant id")
    agent = _canonical_uuid(agent_id, "agent id")
    if serial is None:
        serial = _random_serial()
    elif not 0 < serial < _MAX_SERIAL:
        raise ValueError("serial must be positive and below 2**159 (RFC 5280 4.1.2.2)")
    check_agent_csr(csr)
    not_after = now + lifetime
    _check_issuer(issuer_cert, issuer_key, now=now, not_after=not_after)
    public_key = csr.public_key()
    return (
        x509.CertificateBuilder()
        # DESIGN.md flow 1: the DN is the tenant GUID; tenant isolation rests on it.
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
        .add_extension(_authority_key_id(issuer_cert), critical=False)
        .sign(issuer_key, _hash_for(issuer_key))
    )


# --------------------------------------------------------------------------- checking


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
    if _is_ca(cert):
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
    now = _utc(now)
    if cert.issuer != ca_cert.subject:
        raise CertificateUntrusted(
            f"Issuer '{cert.issuer.rfc4514_string()}' is not '{ca_cert.subject.rfc4514_string()}'."
        )
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CertificateUntrusted("The signature does not verify with the CA key.") from exc
    if not _is_ca(ca_cert):
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


# --------------------------------------------------------------------------- revocation


def build_crl(
    issuer_cert: x509.Certificate,
    issuer_key: PrivateKey,
    revoked: Iterable[tuple[int, dt.datetime]],
    *,
    now: dt.datetime,
    next_update_hours: int = 24,
    crl_number: int | None = None,
) -> x509.CertificateRevocationList:
    """Build a CRL for the PTA CA or the service TLS CA (DESIGN.md flow 4 "Revocation").

    ``revoked`` holds ``(serial, revoked_at)`` pairs; a serial listed twice keeps its
    earliest date. The CRL carries the AKI and a CRL number, both required of a
    conforming CA (RFC 5280 sections 5.2.1 and 5.2.3); ``crl_number`` defaults to
    ``now`` in Unix seconds. Raises ValueError for a naive datetime or a
    non-positive ``next_update_hours``, IssuerUnusable when the key is not the issuer's.
    """
    now = _utc(now)
    if next_update_hours <= 0:
        raise ValueError("next_update_hours must be positive")
    _check_key_matches(issuer_cert, issuer_key)
    earliest: dict[int, dt.datetime] = {}
    for serial, revoked_at in revoked:
        at = _utc(revoked_at)
        earliest[serial] = min(at, earliest.get(serial, at))
    number = crl_number if crl_number is not None else int(now.timestamp())
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer_cert.subject)
        .last_update(now)
        .next_update(now + dt.timedelta(hours=next_update_hours))
        .add_extension(_authority_key_id(issuer_cert), critical=False)
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for serial in sorted(earliest):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(earliest[serial])
            .build()
        )
    return builder.sign(issuer_key, _hash_for(issuer_key))


def crl_der(crl: x509.CertificateRevocationList) -> bytes:
    """DER encoding of a CRL, served as ``application/pkix-crl`` (RFC 2585 section 4.2)."""
    return crl.public_bytes(serialization.Encoding.DER)


# --------------------------------------------------------------------------- internals


def _utc(moment: dt.datetime) -> dt.datetime:
    """Refuse naive datetimes: cryptography would read them as UTC, callers as local."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("datetimes must be timezone-aware (pass datetime.now(UTC))")
    return moment.astimezone(dt.UTC)


def _lifetime(days: int) -> dt.timedelta:
    if days <= 0:
        raise ValueError("lifetime_days must be positive")
    return dt.timedelta(days=days)


def _random_serial() -> int:
    """159 random bits: positive and at most 20 octets (RFC 5280 section 4.1.2.2)."""
    while True:
        serial = secrets.randbits(159)
        if serial:
            return serial


def _hash_for(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384:
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


def _authority_key_id(issuer_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
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
        raise IssuerUnusable(f"Unsupported issuer key type {_key_kind(key)}.")
    return key


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return constraints.ca


def _check_key_matches(issuer_cert: x509.Certificate, issuer_key: PrivateKey) -> None:
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
    if not _is_ca(issuer_cert):
        raise IssuerUnusable("The issuer certificate is not a CA.")
    _check_key_matches(issuer_cert, issuer_key)
    if now < issuer_cert.not_valid_before_utc:
        raise IssuerUnusable("The CA is not valid yet.")
    if not_after > issuer_cert.not_valid_after_utc:
        raise IssuerUnusable(
            f"The CA expires at {issuer_cert.not_valid_after_utc.isoformat()}, before the "
            f"new certificate would ({not_after.isoformat()}); rotate the CA."
        )


def _canonical_uuid(value: str, what: str) -> str:
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
        return _canonical_uuid(value, where)
    except IdentifierInvalid as exc:
        raise AgentIdentityInvalid(f"The {where} is not a canonical UUID.") from exc


def _key_kind(public_key: object) -> str:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return f"an EC key ({public_key.curve.name})"
    return type(public_key).__name__.removeprefix("_")


def _oid_name(oid: x509.ObjectIdentifier) -> str:
    name = oid._name  # cryptography's short name, "Unknown OID" when it has none
    return oid.dotted_string if name == "Unknown OID" else f"{name} ({oid.dotted_string})"
