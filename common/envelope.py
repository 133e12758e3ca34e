"""Envelope crypto: the password sealed by the STS for its tenant's agents, and reply MACs.

Pure functions (docs/contributing.md §3): no I/O, no clock reads (callers pass `now`), no
module-level keys. The wire shapes live in `common.wire`; this module fills and opens them.

Sealing (docs/design.md §4): a fresh AES-256-GCM content key and 96-bit nonce per
request encrypt the plaintext JSON `{"password": ..., "reply_key": <b64 32 bytes>}`; the
content key is wrapped for each recipient agent with RSA-OAEP (SHA-256, MGF1-SHA-256,
empty label). The key is fresh per request, so a nonce can never repeat under one key.

Canonical encodings, each fixed in exactly one function (known-answer tests pin them):
- `request_aad` (GCM associated data) is the concatenation of
    field(b"pta.request.aad") | u32(v) | field(request_id) | field(tenant_id)
    | field(username) | f64(expires_at)
  where field(x) = u32(len(x)) | x with strings as UTF-8, u32 is a 4-byte big-endian
  unsigned integer and f64 the 8-byte big-endian IEEE-754 double. Length prefixes make it
  injective (no field can absorb its neighbour); the double is the exact value JSON carries
  (msgspec writes floats that round-trip), so no decimal formatting has to agree.
- `reply_mac` is base64 (RFC 4648 section 4, padded) of HMAC-SHA256(reply_key,
    field(b"pta.reply.mac") | field(request_id) | field(agent_id) | field(status)).
  The labels separate the two domains.

What is not authenticated, by the field lists of docs/design.md §4: a request's `issued_at` (so
`check_fresh` uses it only for sanity; its real bound is on the authenticated
`expires_at`), and a reply's `kid`, `detail` and `elapsed_ms` (informational only).

Freshness (`check_fresh`): refused when `now >= expires_at`, and when the window is
implausible: `expires_at - now > MAX_LIFETIME_S + MAX_CLOCK_SKEW_S` (authenticated once
opened; it bounds how long an agent's replay cache must remember a request id),
`issued_at > now + MAX_CLOCK_SKEW_S`, or `expires_at - issued_at` outside (0,
MAX_LIFETIME_S]. The default deadline is 10 s (docs/design.md §3.3); 120 s leaves room for
configuration without letting a captured request live long. Agents should call
`check_fresh` before `open_`: it is free, while unwrapping costs an RSA private operation.

Errors: `EnvelopeError` and its subclasses; the class docstring is the message and no
message ever contains a password, reply key or content key (docs/design.md §7).
`KeyNotFound` and `DecryptFailed` carry the reply status an agent sends for them.
"""

from __future__ import annotations

import base64
import hmac
import math
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Final

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from common.pki import spki_sha256_kid
from common.wire import (
    GCM_TAG_BYTES,
    MAX_CIPHERTEXT_BYTES,
    MAX_RECIPIENTS,
    MAX_USERNAME_CHARS,
    NONCE_BYTES,
    USERNAME_RE,
    UUID_RE,
    WIRE_VERSION,
    Recipient,
    Reply,
    RequestEnvelope,
    Status,
)

__all__ = [
    "CONTENT_KEY_BYTES",
    "MAX_CLOCK_SKEW_S",
    "MAX_LIFETIME_S",
    "REPLY_KEY_BYTES",
    "DecryptFailed",
    "EnvelopeError",
    "EnvelopeExpired",
    "EnvelopeLifetimeInvalid",
    "KeyNotFound",
    "Opened",
    "check_fresh",
    "kid_for",
    "new_reply_key",
    "open_",
    "reply_mac",
    "request_aad",
    "seal",
    "verify_reply",
]

CONTENT_KEY_BYTES: Final = 32  # AES-256
REPLY_KEY_BYTES: Final = 32  # HMAC-SHA256 key as long as its output (RFC 2104 section 3)
MAX_LIFETIME_S: Final = 120.0
MAX_CLOCK_SKEW_S: Final = 30.0

_REQUEST_AAD_LABEL: Final = b"pta.request.aad"
_REPLY_MAC_LABEL: Final = b"pta.reply.mac"

# Parameters, not keys: RSA-OAEP with SHA-256 and MGF1-SHA-256 (RFC 8017 section 7.1).
_OAEP: Final = padding.OAEP(
    mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
)


class EnvelopeError(Exception):
    """The request envelope could not be used."""

    # The reply status an agent sends when this is why it gave up (docs/design.md §5).
    status: ClassVar[Status] = Status.AGENT_ERROR

    def __init__(self) -> None:
        # Only the fixed class docstring: no caller text, so no secret can slip in.
        super().__init__((type(self).__doc__ or type(self).__name__).strip())


class KeyNotFound(EnvelopeError):
    """The envelope holds no wrapped key for this agent's key id; it was sealed for others."""

    status = Status.KEY_NOT_FOUND


class DecryptFailed(EnvelopeError):
    """The envelope could not be decrypted: wrong key, or a field was altered in transit."""

    status = Status.DECRYPT_FAILED


class EnvelopeExpired(EnvelopeError):
    """The request's deadline has passed; the STS has already answered the user."""


class EnvelopeLifetimeInvalid(EnvelopeError):
    """The request's validity window is implausible (issued in the future or too long)."""


@dataclass(frozen=True, slots=True)
class Opened:
    """What an agent learns from an envelope. Both fields are secrets: never logged."""

    password: str = field(repr=False)
    reply_key: bytes = field(repr=False)


class _Plaintext(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The GCM plaintext (docs/design.md §4); reply_key travels as padded base64."""

    password: str
    reply_key: bytes

    def __repr__(self) -> str:
        return "_Plaintext(<redacted>)"


_PLAINTEXT_ENCODER: Final = msgspec.json.Encoder()
_PLAINTEXT_DECODER: Final = msgspec.json.Decoder(_Plaintext)


def kid_for(public_key: RSAPublicKey) -> str:
    """Return an agent's key id: base64url, unpadded, of SHA-256 over its DER SPKI.

    The CA stores it at registration (docs/design.md §3.1, step 5) and the agent finds its
    wrapped key by it. One definition for both sides: `common.pki.spki_sha256_kid`.
    Compute it once per key, not per request.
    """
    return spki_sha256_kid(public_key)


def new_reply_key() -> bytes:
    """Return a fresh random reply key (32 bytes) for one request."""
    return os.urandom(REPLY_KEY_BYTES)


def _field(value: bytes) -> bytes:
    """Length-prefix one field (u32 big-endian) so a concatenation stays injective."""
    return struct.pack(">I", len(value)) + value


def request_aad(
    *, v: int, request_id: str, tenant_id: str, username: str, expires_at: float
) -> bytes:
    """Return the GCM associated data that binds a request's cleartext fields.

    The one canonical encoding (see module docstring), used by both `seal` and `open_`.
    Raises `UnicodeEncodeError` only for strings with lone surrogates, which the wire
    decoder never produces.
    """
    return b"".join(
        (
            _field(_REQUEST_AAD_LABEL),
            struct.pack(">I", v),
            _field(request_id.encode()),
            _field(tenant_id.encode()),
            _field(username.encode()),
            struct.pack(">d", expires_at),
        )
    )


def seal(
    *,
    password: str,
    reply_key: bytes,
    recipients: Sequence[tuple[str, RSAPublicKey]],
    request_id: str,
    tenant_id: str,
    username: str,
    issued_at: float,
    expires_at: float,
) -> RequestEnvelope:
    """Encrypt a password and reply key for the tenant's agents (docs/design.md §3.3, step 2).

    `recipients` are (kid, public key) pairs of the tenant's active agents, keys already
    loaded (kids are trusted as given: compute them once with `kid_for`). Any one of them
    can open the result. Raises `ValueError` for a call that would produce an envelope the
    agents refuse (ids not canonical UUIDs, a username the wire refuses, reply key not 32
    bytes, 0 or more than 40 recipients, a window that is not finite and increasing, a
    password too long or not valid Unicode); the message never contains the password.
    """
    # The same edge rules as `wire.decode_request`, so the STS fails here, loudly, instead
    # of publishing a request every agent refuses and timing out (AADSTS80002).
    if not (UUID_RE.match(request_id) and UUID_RE.match(tenant_id)):
        raise ValueError("request_id and tenant_id must be canonical lowercase UUIDs")
    if len(username) > MAX_USERNAME_CHARS or not USERNAME_RE.match(username):
        raise ValueError("username is empty, too long or holds control characters")
    if len(reply_key) != REPLY_KEY_BYTES:
        raise ValueError(f"reply_key must be {REPLY_KEY_BYTES} bytes")
    if not 1 <= len(recipients) <= MAX_RECIPIENTS:
        raise ValueError(f"an envelope needs 1 to {MAX_RECIPIENTS} recipients")
    if not (math.isfinite(issued_at) and math.isfinite(expires_at) and issued_at < expires_at):
        raise ValueError("issued_at and expires_at must be finite with issued_at < expires_at")
    try:
        plaintext = _PLAINTEXT_ENCODER.encode(_Plaintext(password=password, reply_key=reply_key))
    except UnicodeEncodeError:
        # The exception's args would hold the whole password: drop it (from None).
        raise ValueError("password is not valid Unicode text") from None
    if len(plaintext) + GCM_TAG_BYTES > MAX_CIPHERTEXT_BYTES:
        raise ValueError("password is too long for the envelope")
    content_key = os.urandom(CONTENT_KEY_BYTES)
    nonce = os.urandom(NONCE_BYTES)
    aad = request_aad(
        v=WIRE_VERSION,
        request_id=request_id,
        tenant_id=tenant_id,
        username=username,
        expires_at=expires_at,
    )
    ciphertext = AESGCM(content_key).encrypt(nonce, plaintext, aad)
    wrapped = tuple(
        Recipient(kid=kid, key=public_key.encrypt(content_key, _OAEP))
        for kid, public_key in recipients
    )
    return RequestEnvelope(
        v=WIRE_VERSION,
        request_id=request_id,
        tenant_id=tenant_id,
        username=username,
        issued_at=issued_at,
        expires_at=expires_at,
        nonce=nonce,
        ciphertext=ciphertext,
        recipients=wrapped,
    )


def open_(envelope: RequestEnvelope, private_key: RSAPrivateKey, kid: str) -> Opened:
    """Decrypt an agent's copy of the password and the reply key (docs/design.md §3.3, step 3).

    Raises `KeyNotFound` if no recipient has `kid`, and `DecryptFailed` if the wrapped key
    does not unwrap with `private_key` or GCM rejects the ciphertext, i.e. any of `v`,
    `request_id`, `tenant_id`, `username`, `expires_at`, `nonce`, `ciphertext` or this
    agent's wrapped key was altered. Freshness is `check_fresh`'s job.
    """
    for recipient in envelope.recipients:
        if recipient.kid == kid:
            wrapped = recipient.key
            break
    else:
        raise KeyNotFound
    # One error for every failure below, raised `from None`: the cause would tell an OAEP
    # failure from a tag failure, which helps nobody but an oracle attacker (Manger, 2001).
    try:
        content_key = private_key.decrypt(wrapped, _OAEP)
    except ValueError:
        raise DecryptFailed from None
    if len(content_key) != CONTENT_KEY_BYTES:
        raise DecryptFailed
    aad = request_aad(
        v=envelope.v,
        request_id=envelope.request_id,
        tenant_id=envelope.tenant_id,
        username=envelope.username,
        expires_at=envelope.expires_at,
    )
    try:
        plaintext = AESGCM(content_key).decrypt(envelope.nonce, envelope.ciphertext, aad)
        inner = _PLAINTEXT_DECODER.decode(plaintext)
    except (InvalidTag, ValueError, UnicodeError):  # msgspec.DecodeError is a ValueError
        raise DecryptFailed from None
    if len(inner.reply_key) != REPLY_KEY_BYTES:
        raise DecryptFailed
    return Opened(password=inner.password, reply_key=inner.reply_key)


def check_fresh(
    envelope: RequestEnvelope,
    now: float,
    *,
    max_lifetime_s: float = MAX_LIFETIME_S,
    max_skew_s: float = MAX_CLOCK_SKEW_S,
) -> None:
    """Refuse a request past its deadline or with an implausible window (Security rules).

    `now` is the caller's Unix time. Raises `EnvelopeExpired` when `now >= expires_at`, and
    `EnvelopeLifetimeInvalid` when the deadline lies more than `max_lifetime_s +
    max_skew_s` ahead, `issued_at` more than `max_skew_s` ahead, or `expires_at -
    issued_at` is not in (0, `max_lifetime_s`]. Replay (a request id seen before) is the
    agent's check; this bounds how long it must remember ids.
    """
    if now >= envelope.expires_at:
        raise EnvelopeExpired
    if (
        envelope.expires_at - now > max_lifetime_s + max_skew_s
        or envelope.issued_at > now + max_skew_s
        or not 0 < envelope.expires_at - envelope.issued_at <= max_lifetime_s
    ):
        raise EnvelopeLifetimeInvalid


def reply_mac(reply_key: bytes, request_id: str, agent_id: str, status: Status) -> str:
    """Return the reply MAC: base64 HMAC-SHA256 over the canonical (request_id, agent_id,
    status) encoding in the module docstring.

    Only an agent that opened the request knows `reply_key`, so the STS can tell its
    reply from one forged by another agent, tenant or process (docs/design.md §4).
    """
    message = b"".join(
        (
            _field(_REPLY_MAC_LABEL),
            _field(request_id.encode()),
            _field(agent_id.encode()),
            _field(str(status).encode()),
        )
    )
    return base64.b64encode(hmac.digest(reply_key, message, "sha256")).decode("ascii")


def verify_reply(reply: Reply, reply_key: bytes) -> bool:
    """Return whether `reply.mac` is the MAC of its request id, agent id and status.

    Constant-time comparison (docs/contributing.md §3). An empty MAC (the unauthenticated
    failure statuses) is never valid. The caller still checks that the request id, tenant
    and agent are the ones it expects.
    """
    if not reply.mac:
        return False
    expected = reply_mac(reply_key, reply.request_id, reply.agent_id, reply.status)
    return hmac.compare_digest(expected.encode(), reply.mac.encode())
