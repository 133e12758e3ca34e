"""TLS context builders: the one place that decides how every TLS channel is set up.

What: ``server_context`` for the STS and CA listeners, ``client_context`` for every
outbound TLS connection (agent to CA, updater to CA, tools to STS), and
``peer_certificate`` to read the client certificate a handshake verified, and
``strict_transport_security``, the signal handler that adds HSTS to every HTTPS answer of
an aiohttp application (the STS and the CA API).

Why one builder (docs/contributing.md §3, docs/design.md §7: every TLS channel
verifies its peer, the agent pins its CA bundle):
- TLS 1.2 is the minimum; for TLS 1.2 only ECDHE key exchange with AEAD ciphers is
  offered (forward secrecy, no CBC; the TLS 1.3 suites are all AEAD already).
- Peers are verified against the CA file given here and nothing else: the contexts are
  built from ``ssl.SSLContext`` directly, never ``create_default_context`` or
  ``load_default_certs``, so the system trust store is never consulted.
- ``VERIFY_X509_STRICT`` makes OpenSSL apply the RFC 5280 checks to every chain.
- Clients match host names against SANs only (RFC 6125 section 6.4.4), never the CN.

Building a context reads the certificate and key files named by the caller; it has no
other I/O. Errors are ``TlsConfigError``, naming the file and the setting to fix.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from typing import Final

from aiohttp import web
from cryptography import x509

from common.errors import DocumentedError

_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"

StrPath = str | os.PathLike[str]

HSTS: Final = "max-age=31536000; includeSubDomains"
"""Strict-Transport-Security: a year, subdomains included (as Entra's login host sends)."""


class TlsConfigError(DocumentedError):
    """The TLS configuration cannot be used."""


def server_context(
    cert_file: StrPath,
    key_file: StrPath,
    *,
    client_ca_file: StrPath | None = None,
    require_client_cert: bool = False,
) -> ssl.SSLContext:
    """Build the context of an HTTPS listener (STS or CA).

    Without ``client_ca_file`` no client certificate is asked for. With it, clients are
    asked for a certificate from that CA only: ``require_client_cert`` makes it
    mandatory (CERT_REQUIRED); otherwise it is optional (CERT_OPTIONAL), so one
    listener serves bearer-token endpoints and mutual-TLS endpoints. A certificate that
    is presented is always verified: a wrong one fails the handshake even when optional,
    so ``peer_certificate`` only ever returns a certificate this CA issued. Endpoints
    that need mutual TLS must still refuse a request whose ``peer_certificate`` is None.

    Raises TlsConfigError when a file cannot be loaded or when a client certificate is
    required without a CA to check it.
    """
    if require_client_cert and client_ca_file is None:
        raise TlsConfigError("require_client_cert needs client_ca_file (the PTA CA bundle).")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(context)
    # The server picks the suite so that its AEAD-first order applies.
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    _load_chain(context, cert_file, key_file)
    if client_ca_file is not None:
        _load_ca(context, client_ca_file, "client_ca_file")
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def client_context(
    ca_file: StrPath,
    *,
    cert_file: StrPath | None = None,
    key_file: StrPath | None = None,
    crl_file: StrPath | None = None,
) -> ssl.SSLContext:
    """Build the context of an outbound TLS connection, pinned to ``ca_file``.

    The server must present a certificate chaining to ``ca_file`` (the service TLS CA
    bundle the agent was registered with) whose SAN matches the host name or IP
    connected to. ``cert_file``/``key_file`` add the agent's client certificate for
    mutual TLS (``key_file`` may be omitted when the key is in ``cert_file``).
    ``crl_file`` (PEM CRL of the server's issuer) makes a server certificate listed on it
    fail the handshake (OpenSSL verify code 23, certificate revoked).

    Raises TlsConfigError when a file cannot be loaded or ``key_file`` comes without
    ``cert_file``.
    """
    if key_file is not None and cert_file is None:
        raise TlsConfigError("key_file was given without cert_file.")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(context)
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = True
    context.hostname_checks_common_name = False
    _load_ca(context, ca_file, "ca_file")
    if crl_file is not None:
        try:
            context.load_verify_locations(cafile=crl_file)
        except (OSError, ssl.SSLError) as exc:
            raise TlsConfigError(
                f"Cannot load CRL {os.fspath(crl_file)!r}: {_reason(exc)}."
            ) from exc
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    if cert_file is not None:
        _load_chain(context, cert_file, key_file)
    return context


def peer_certificate(
    source: asyncio.BaseTransport | ssl.SSLObject | ssl.SSLSocket | None,
) -> x509.Certificate | None:
    """The certificate the TLS peer presented, or None when it presented none.

    ``source`` is an asyncio transport (``request.transport`` in aiohttp), an
    ``SSLObject`` or an ``SSLSocket``. A plain-TCP transport or a closed one gives None.
    The certificate has been verified against the context's CA file by the handshake;
    its identity (``common.pki.agent_identity``) and revocation are the caller's.
    """
    if source is None:
        return None
    if isinstance(source, ssl.SSLObject | ssl.SSLSocket):
        ssl_object: object = source
    else:
        ssl_object = source.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    return x509.load_der_x509_certificate(der)


def _harden(context: ssl.SSLContext) -> None:
    """Settings shared by both sides (see the module docstring for the reasons)."""
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(_TLS12_CIPHERS)
    # No compression (CRIME) and no TLS 1.2 renegotiation (CVE-2009-3555 class, and
    # client-initiated renegotiation is a cheap DoS); Python sets the first by default.
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.verify_flags |= ssl.VERIFY_X509_STRICT


def _load_chain(context: ssl.SSLContext, cert_file: StrPath, key_file: StrPath | None) -> None:
    try:
        context.load_cert_chain(certfile=cert_file, keyfile=key_file)
    except (OSError, ssl.SSLError) as exc:
        # The library's reason names the failure; it never contains key bytes.
        raise TlsConfigError(
            f"Cannot load certificate {os.fspath(cert_file)!r} with key "
            f"{os.fspath(key_file) if key_file is not None else '(in the same file)'!r}: "
            f"{_reason(exc)}. Check the cert_file and key_file settings."
        ) from exc


def _load_ca(context: ssl.SSLContext, ca_file: StrPath, setting: str) -> None:
    try:
        context.load_verify_locations(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(
            f"Cannot load CA bundle {os.fspath(ca_file)!r}: {_reason(exc)}. "
            f"Check the {setting} setting."
        ) from exc
    if not context.get_ca_certs():
        raise TlsConfigError(f"CA bundle {os.fspath(ca_file)!r} holds no CA certificate.")


def _reason(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    return exc.strerror or type(exc).__name__


async def strict_transport_security(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """``on_response_prepare`` handler: HSTS on every answer sent over TLS (RFC 6797).

    Errors included: the signal fires for every response the application prepares,
    whatever the middleware or handler that made it. Not on plain HTTP (the CA's CRL
    port): a browser ignores it there (RFC 6797 section 8.1) and the header would claim
    an HTTPS-only host that is not.
    """
    if request.secure:
        response.headers["Strict-Transport-Security"] = HSTS
