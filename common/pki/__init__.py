"""Certificate authority helpers shared by the CA service, the agent and the stack launcher.

What: key generation, PEM encoding, the two self-signed CAs of docs/design.md (the "PTA CA",
which signs agent client certificates and nothing else, and the "service TLS CA", which
signs the STS and CA HTTPS server certificates), CSR vetting, agent certificate issuance,
agent identity parsing, issuer verification and CRLs.

Why here: the agent builds CSRs and reads its certificate, the CA vets and signs them and
the launcher makes the CAs; one package keeps the certificate profile in one place.

Modules, one concept each: ``errors``, ``keys`` (key generation, PEM, key ids),
``keyfiles`` (the private key file writer and reader), ``validity`` (windows, serials),
``identity`` (agent certificate shape, issuer checks), ``csr`` (building and vetting
CSRs), ``issuing`` (CAs, server and agent certificates), ``crl``. Everything public is
importable from ``common.pki`` itself, which is how callers use it.

Rules (docs/contributing.md §3): pure functions, no clock reads (every caller passes an aware
``now``), no module-level keys, no I/O except in ``keyfiles``. Errors derive from
``PkiError``; a class docstring is its default message and no message ever carries key
material.

Choices not fixed by docs/design.md:
- CA and server keys default to ECDSA P-256 (fast to make, 128-bit strength); agent keys
  are RSA because the envelope wraps content keys with RSA-OAEP (docs/design.md §4).
- ``not_before`` is backdated by ``CLOCK_SKEW`` (5 minutes) on every certificate so that a
  peer whose clock is slightly behind accepts a certificate issued a moment ago.
- A certificate that would outlive its issuer is refused (``IssuerUnusable``) rather than
  silently shortened: a shortened certificate would hide the need to rotate the CA.
- The default CRL number is ``now`` in Unix seconds: monotonic across the stateless CA
  replicas without shared state (RFC 5280 section 5.2.3 asks only that it increase).
"""

from __future__ import annotations

from common.pki.crl import build_crl, crl_der
from common.pki.csr import check_agent_csr, csr_pem, new_agent_csr, validate_csr
from common.pki.errors import (
    AgentIdentityInvalid,
    CertificateExpired,
    CertificateNotYetValid,
    CertificateRejected,
    CertificateUntrusted,
    CsrKeyExponentRejected,
    CsrKeyNotRsa,
    CsrKeySizeRejected,
    CsrNotPem,
    CsrRejected,
    CsrRequestsExtensions,
    CsrSignatureInvalid,
    CsrTooLarge,
    IdentifierInvalid,
    IssuerUnusable,
    KeyFileExists,
    KeyFileExposed,
    PemInvalid,
    PkiError,
)
from common.pki.identity import AGENT_URI_PREFIX, AgentIdentity, agent_identity, verify_issued_by
from common.pki.issuing import issue_server_cert, make_ca, sign_agent_csr
from common.pki.keyfiles import read_private_key, write_private_key
from common.pki.keys import (
    MAX_AGENT_RSA_BITS,
    MIN_AGENT_RSA_BITS,
    PrivateKey,
    certificate_pem,
    certificates_pem,
    load_certificate_pem,
    load_certificates_pem,
    load_private_key_pem,
    new_ec_key,
    new_rsa_key,
    private_key_pem,
    spki_der,
    spki_sha256_kid,
)
from common.pki.validity import CLOCK_SKEW

__all__ = [
    "AGENT_URI_PREFIX",
    "CLOCK_SKEW",
    "MAX_AGENT_RSA_BITS",
    "MIN_AGENT_RSA_BITS",
    "AgentIdentity",
    "AgentIdentityInvalid",
    "CertificateExpired",
    "CertificateNotYetValid",
    "CertificateRejected",
    "CertificateUntrusted",
    "CsrKeyExponentRejected",
    "CsrKeyNotRsa",
    "CsrKeySizeRejected",
    "CsrNotPem",
    "CsrRejected",
    "CsrRequestsExtensions",
    "CsrSignatureInvalid",
    "CsrTooLarge",
    "IdentifierInvalid",
    "IssuerUnusable",
    "KeyFileExists",
    "KeyFileExposed",
    "PemInvalid",
    "PkiError",
    "PrivateKey",
    "agent_identity",
    "build_crl",
    "certificate_pem",
    "certificates_pem",
    "check_agent_csr",
    "crl_der",
    "csr_pem",
    "issue_server_cert",
    "load_certificate_pem",
    "load_certificates_pem",
    "load_private_key_pem",
    "make_ca",
    "new_agent_csr",
    "new_ec_key",
    "new_rsa_key",
    "private_key_pem",
    "read_private_key",
    "sign_agent_csr",
    "spki_der",
    "spki_sha256_kid",
    "validate_csr",
    "verify_issued_by",
    "write_private_key",
]
