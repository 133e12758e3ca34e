"""Certificate renewal on the agent (docs/design.md §3.4; docs/architecture.md "Certificate
renewal").

``renew`` does the agent's half: a NEW RSA-2048 key made here (it never leaves the host),
a CSR for it sent with ``POST /agents/renew`` over mutual TLS with the CURRENT
certificate, the answer checked (same agent and tenant, issued by our PTA CA for this
key), and the new key and certificate stored with the crash-safe two-phase switch of
``agent.state`` (``begin_renewal`` → CA → ``store_renewed_certificate`` →
``finish_renewal``). ``checkpoint`` is called between the steps (tests kill the process
there). A ``renew.key`` left by a crash is reused rather than replaced: the CA answers a
repeated request for the same key with the certificate it already issued.

What the daemon does around it (``agent.runner``): renew when a heartbeat answers
``renew: true``; keep the old private key for requests sealed before the STS switched
(``KEEP_OLD_KEY_S``: the longest request lifetime plus clock skew); present the new
certificate to the CA from then on; bootstrap again with it and move the consumer to the
new broker link make-before-break. ``expiry_stop_delay`` says when a certificate that was
not renewed makes the daemon stop consuming, before the CA stops trusting it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from enum import StrEnum

import structlog
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from agent import state
from agent.cloud import CaClient, RenewalReplayed
from agent.errors import AgentError
from common import pki
from common.envelope import MAX_CLOCK_SKEW_S, MAX_LIFETIME_S

log = structlog.get_logger(__name__)

RENEWAL_KEY_BITS = 2048
KEEP_OLD_KEY_S = MAX_LIFETIME_S + MAX_CLOCK_SKEW_S


class Step(StrEnum):
    """Points of a renewal where ``checkpoint`` is called (and a crash is survivable)."""

    KEY_WRITTEN = "key_written"  # renew.key stored, CA not asked yet
    CA_ANSWERED = "ca_answered"  # the CA switched the agent; renew.crt not stored yet
    CERT_WRITTEN = "cert_written"  # renew.crt stored; files not switched yet
    SWITCHED = "switched"  # agent.key and agent.crt are the new ones


class RenewalAnswerInvalid(AgentError):
    """The CA's renewal answer is not a certificate for this agent's new key from its PTA
    CA: tell the operator of the cloud service; the agent keeps its current identity."""


def _no_checkpoint(step: Step) -> None:
    return None


async def renew(
    ca: CaClient,
    registration: state.Registration,
    *,
    now: dt.datetime,
    checkpoint: Callable[[Step], None] = _no_checkpoint,
    on_new_key: Callable[[str, rsa.RSAPrivateKey], None] | None = None,
) -> tuple[state.Registration, rsa.RSAPrivateKey]:
    """Renew the agent's certificate; returns the new registration and its key.

    ``on_new_key(kid, key)`` is called before the CA is asked: from the CA's commit on,
    the STS seals requests for the new key, while the files are still being written here.

    Raises RenewalInProgress (come back after ``retry_after_s``), AgentGone (the cloud
    no longer accepts the current certificate), RenewalAnswerInvalid, StateError, other
    CaErrors and https errors. On any error before the switch the current identity stays.
    """
    folder = registration.dir
    key = state.pending_renewal_key(folder)
    if key is None:
        key = pki.new_rsa_key(RENEWAL_KEY_BITS)
        state.begin_renewal(folder, key)
        log.info("renewal_started")
    else:
        log.info("renewal_resumed")
    checkpoint(Step.KEY_WRITTEN)
    csr = pki.csr_pem(pki.new_agent_csr(key))
    if on_new_key is not None:
        on_new_key(pki.spki_sha256_kid(key.public_key()), key)
    try:
        answer = await ca.renew(csr)
    except RenewalReplayed:
        # This key was used already (an old leftover): next time, a fresh one.
        folder.pending_key.unlink(missing_ok=True)
        raise
    checkpoint(Step.CA_ANSWERED)
    certificate = _check(answer.certificate, key, registration, now)
    state.store_renewed_certificate(folder, certificate)
    checkpoint(Step.CERT_WRITTEN)
    state.finish_renewal(folder)
    checkpoint(Step.SWITCHED)
    renewed = state.load(folder.path)
    log.info(
        "certificate_renewed",
        kid=renewed.kid,
        previous_kid=registration.kid,
        serial=answer.serial,
        not_after=renewed.not_after.isoformat(),
    )
    return renewed, key


def _check(
    pem: str, key: rsa.RSAPrivateKey, registration: state.Registration, now: dt.datetime
) -> x509.Certificate:
    try:
        cert = pki.load_certificate_pem(pem.encode("ascii"))
        identity = pki.agent_identity(cert)
        issuers = pki.load_certificates_pem(registration.dir.pta_ca.read_bytes())
        pki.verify_issued_by(cert, issuers[0], now=now)
    except (pki.PkiError, OSError, UnicodeError) as exc:
        raise RenewalAnswerInvalid(detail=str(exc)) from exc
    record = registration.record
    if (identity.agent_id, identity.tenant_id) != (record.agent_id, record.tenant_id):
        raise RenewalAnswerInvalid(detail="certificate for another agent or tenant")
    if pki.spki_der(cert.public_key()) != pki.spki_der(key.public_key()):
        raise RenewalAnswerInvalid(detail="certificate for another key")
    return cert


def expiry_stop_delay(not_after: dt.datetime, *, now: dt.datetime, margin_s: float) -> float:
    """Seconds until the daemon must stop consuming: ``margin_s`` before ``not_after``
    (0 when that is already past)."""
    return max(0.0, (not_after - now).total_seconds() - margin_s)
