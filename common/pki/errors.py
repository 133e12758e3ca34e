"""Errors of certificate operations: ``PkiError`` and one subclass per event. A class
docstring is the default message; no message ever carries key material."""

from __future__ import annotations

from common.errors import DocumentedError


class PkiError(DocumentedError):
    """A certificate operation failed."""


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
