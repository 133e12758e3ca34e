"""The service TLS CA's CRL on the agent (docs/architecture.md "Agent lifecycle",
revocation): a CA, STS or broker server certificate listed on it is refused.

``refresh`` asks the CA where its CRLs are (``GET /.well-known/pta-configuration``,
``crl_url``; the CA's own certificate names the same place as its CRL distribution
point), fetches ``{crl_url}/service.crl`` over plain HTTP (a CRL is signed: no TLS
needed), and keeps it in the state folder (``service-crl.pem``) only when it is signed by
a CA of the registration's bundle and not older than the one stored (a replayed old CRL
cannot un-revoke a certificate). ``state.Registration.server_tls`` / ``mutual_tls`` then
load it with ``VERIFY_CRL_CHECK_LEAF``: a listed server certificate fails the handshake
and the agent says so (``agent.https``: "revoked"; ``agent.broker``:
``BrokerCertificateRevoked``).

The runner refreshes at start and every ``REFRESH_S``; the CA client's TLS context is
rebuilt after each change, the broker's at each new link (bootstrap, key refresh,
renewal). A failed fetch keeps the stored CRL (logged ``service_crl_unavailable``); a
stored CRL past its next update is not used (sign-ins go on while the CA is down).
"""

from __future__ import annotations

import datetime as dt
import os
from urllib.parse import urlsplit

import aiohttp
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pydantic import BaseModel, ConfigDict

from agent import state
from agent.errors import AgentError
from agent.https import HttpsClient
from common import pki

log = structlog.get_logger("agent.service_crl")

REFRESH_S = 3600.0
MAX_CRL_BYTES = 4 * 1024 * 1024


class CrlUnavailable(AgentError):
    """The service CRL could not be fetched or checked; the stored one (if any) stays."""


class _Configuration(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    crl_url: str


async def refresh(registration: state.Registration, *, timeout_s: float) -> bool:
    """Fetch, check and store the service CRL; True when a newer CRL was stored.

    Never raises for a network or CRL problem (logged ``service_crl_unavailable``): a CA
    that cannot be reached must not stop the agent. A revoked CA certificate does make
    the configuration call fail: that is logged the same way and the stored CRL (which
    lists it) stays in force.
    """
    try:
        crl_url = await _crl_url(registration, timeout_s=timeout_s)
        crl = await _fetch(f"{crl_url}/service.crl", timeout_s=timeout_s)
        _check_issuer(crl, registration)
        return _store(registration.dir.service_crl, crl)
    except AgentError as exc:
        log.warning("service_crl_unavailable", error=str(exc), kind=type(exc).__name__)
        return False


async def _crl_url(registration: state.Registration, *, timeout_s: float) -> str:
    async with HttpsClient(
        registration.record.ca_url,
        ssl_context=registration.server_tls(),
        timeout_s=timeout_s,
        trust=f"the CA bundle this agent was registered with ({registration.dir.ca_bundle})",
        service="the CA",
    ) as http:
        answer = await http.call("GET", "/.well-known/pta-configuration")
        if answer.status != 200:
            raise CrlUnavailable(f"pta-configuration answered HTTP {answer.status}.")
        crl_url = answer.parse(_Configuration).crl_url.rstrip("/")
    parts = urlsplit(crl_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CrlUnavailable(f"The CA names no usable CRL URL ({crl_url[:200]!r}).")
    return crl_url


async def _fetch(url: str, *, timeout_s: float) -> x509.CertificateRevocationList:
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout, trust_env=False) as http,
            http.get(url, allow_redirects=False) as answer,
        ):
            if answer.status != 200:
                raise CrlUnavailable(f"{url} answered HTTP {answer.status}.")
            body = await answer.content.read(MAX_CRL_BYTES + 1)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise CrlUnavailable(f"{url}: {type(exc).__name__}.") from exc
    if len(body) > MAX_CRL_BYTES:
        raise CrlUnavailable(f"{url}: the CRL is larger than {MAX_CRL_BYTES} bytes.")
    try:
        return x509.load_der_x509_crl(body)
    except ValueError as exc:
        raise CrlUnavailable(f"{url} returned no DER CRL.") from exc


def _check_issuer(crl: x509.CertificateRevocationList, registration: state.Registration) -> None:
    """The CRL is signed by a CA of the registration's bundle, else CrlUnavailable."""
    for ca in pki.load_certificates_pem(registration.dir.ca_bundle.read_bytes()):
        if ca.subject == crl.issuer and crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
            return
    raise CrlUnavailable("The service CRL is not signed by a CA of this agent's bundle.")


def _number(crl: x509.CertificateRevocationList) -> int:
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        return 0


def _store(path: os.PathLike[str] | str, crl: x509.CertificateRevocationList) -> bool:
    """Write ``crl`` atomically unless the stored one is newer (CRL number)."""
    target = os.fspath(path)
    try:
        with open(target, "rb") as stored_file:
            stored = x509.load_pem_x509_crl(stored_file.read())
        if _number(stored) >= _number(crl):
            return False
    except (OSError, ValueError):
        pass
    temporary = f"{target}.tmp"
    with open(temporary, "wb") as out:
        out.write(crl.public_bytes(serialization.Encoding.PEM))
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, target)
    log.info(
        "service_crl_stored",
        revoked=len(list(crl)),
        next_update=(crl.next_update_utc or dt.datetime.max).isoformat(),
    )
    return True
