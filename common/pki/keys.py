"""Keys and PEM: generating agent (RSA) and CA/server (EC P-256) keys, PEM encoding and
decoding of keys and certificates, and the agent key id (SHA-256 of the DER SPKI)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from common.encoding import b64url
from common.pki.errors import PemInvalid

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
"""Private key types this project uses: RSA for agents, EC P-256 for CAs and servers."""


MIN_AGENT_RSA_BITS = 2048


MAX_AGENT_RSA_BITS = 4096


MIN_RSA_EXPONENT = 65537


def new_rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    """Generate an RSA key for an agent (docs/design.md §3.1 step 2; exponent 65537).

    Raises ValueError when ``bits`` is outside the range the CA accepts.
    """
    if not MIN_AGENT_RSA_BITS <= bits <= MAX_AGENT_RSA_BITS:
        raise ValueError(f"RSA key size must be {MIN_AGENT_RSA_BITS} to {MAX_AGENT_RSA_BITS}")
    return rsa.generate_private_key(public_exponent=MIN_RSA_EXPONENT, key_size=bits)


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
    """Key id of docs/design.md: base64url, unpadded, of SHA-256 over the DER SPKI."""
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


def key_kind(public_key: object) -> str:
    """A key's kind for an error message (never its value)."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return f"an EC key ({public_key.curve.name})"
    return type(public_key).__name__.removeprefix("_")
