"""Certificate signing requests: the agent builds one that asks for nothing; the CA vets
what it receives before anything else looks at it."""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from common.pki.errors import (
    CsrKeyExponentRejected,
    CsrKeyNotRsa,
    CsrKeySizeRejected,
    CsrNotPem,
    CsrRequestsExtensions,
    CsrSignatureInvalid,
    CsrTooLarge,
)
from common.pki.keys import MAX_AGENT_RSA_BITS, MIN_AGENT_RSA_BITS, MIN_RSA_EXPONENT, key_kind

_ALLOWED_CSR_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)


_PEM_CSR_BEGIN = b"-----BEGIN CERTIFICATE REQUEST-----"


_PEM_CSR_END = b"-----END CERTIFICATE REQUEST-----"


def csr_pem(csr: x509.CertificateSigningRequest) -> bytes:
    """Encode a CSR as PEM, the form the agent posts to the CA."""
    return csr.public_bytes(serialization.Encoding.PEM)


def new_agent_csr(key: rsa.RSAPrivateKey) -> x509.CertificateSigningRequest:
    """Build the CSR an agent sends: empty subject, no extensions, no attributes.

    The CA decides subject and SAN (docs/design.md §3.1 step 4), so the agent asks for
    nothing; the CSR only proves possession of the key.
    """
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )


def validate_csr(pem: bytes, *, max_bytes: int = 8192) -> x509.CertificateSigningRequest:
    """Vet an agent's CSR before anything else looks at it (docs/design.md §3.1 step 4).

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
        raise CsrKeyNotRsa(f"Got {key_kind(public_key)}.")
    bits = public_key.key_size
    if not MIN_AGENT_RSA_BITS <= bits <= MAX_AGENT_RSA_BITS:
        raise CsrKeySizeRejected(f"Got {bits} bits.")
    exponent = public_key.public_numbers().e
    if exponent < MIN_RSA_EXPONENT or exponent % 2 == 0:
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


def _oid_name(oid: x509.ObjectIdentifier) -> str:
    name = oid._name  # cryptography's short name, "Unknown OID" when it has none
    return oid.dotted_string if name == "Unknown OID" else f"{name} ({oid.dotted_string})"
