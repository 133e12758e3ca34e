"""Wire format version 1: every byte that crosses STS and agent (docs/design.md §4).

Two messages travel over AMQP: the sign-in request (`RequestEnvelope`, STS -> agent, on the
tenant's queue) and the agent's answer (`Reply`, agent -> STS, via exchange `pta.replies`).
Both are JSON (UTF-8) produced and parsed by msgspec into frozen Structs that reject unknown
fields (docs/contributing.md §3). `decode_request` and `decode_reply` return a model or raise
`WireError`; no `dict[str, Any]` leaves this module. It is also the only code that reads or
writes AMQP message properties (`request_message`, `reply_message`, `correlation_of`).

Validated at the edge, because it is cheap and a hostile queue is the threat model:
- body size: requests <= `MAX_REQUEST_BYTES` (64 KiB), replies <= `MAX_REPLY_BYTES` (4 KiB);
- `v` is exactly 1; unknown fields, wrong JSON types, trailing data and bad UTF-8 are refused;
- ids are canonical UUIDs (lowercase, hyphenated, as `str(uuid.UUID(...))` prints them), so
  one id has one spelling in the GCM associated data and in correlation maps;
- `username` is 1..1024 characters without C0 control characters or DEL (UPNs have none,
  and a NUL or newline is only ever an injection attempt);
- `nonce` is base64 of exactly 12 bytes; `ciphertext` is base64 of 16 (the GCM tag) to
  8 KiB; each recipient's wrapped key is base64 of 256..512 bytes (RSA-2048..4096);
  `kid` is base64url without padding of a SHA-256 digest (43 characters);
- 1..40 recipients (docs/design.md: at most 40 agents per tenant), no kid twice;
- timestamps are finite, positive and before the year 2286; `elapsed_ms` is 0..1 hour;
- `detail` is at most 200 characters; `status` is one of `Status`;
- `mac` is base64 of 32 bytes, or empty for the statuses an agent reaches before it holds the
  reply key (`UNAUTHENTICATED_STATUSES`); such a reply can only fail a sign-in, never pass it.

Request size cap, computed: one RSA-2048 recipient encodes to ~0.41 KB (`kid` 43 + `key`
344 + JSON 25), an RSA-4096 one to ~0.75 KB, so 40 recipients need at most 30 KB; a
1024-character username escaped as JSON is at most 12 KB; the ciphertext cap (8 KiB) is
at most 11 KB in base64; the fixed fields ~0.3 KB. 64 KiB covers the worst case with room,
and a body beyond it is refused before any parsing.

Base64 fields are standard base64 with padding (RFC 4648 section 4), as msgspec encodes
`bytes`; `kid` is base64url without padding (RFC 4648 section 5), as `envelope.kid_for`
produces it.
"""

from __future__ import annotations

import enum
import math
import re
from typing import Annotated, Final, Literal, TypeVar

import aio_pika
import aio_pika.abc
import msgspec

from common.errors import DocumentedError

__all__ = [
    "GCM_TAG_BYTES",
    "MAX_CIPHERTEXT_BYTES",
    "MAX_DETAIL_CHARS",
    "MAX_RECIPIENTS",
    "MAX_REPLY_BYTES",
    "MAX_REQUEST_BYTES",
    "MAX_USERNAME_CHARS",
    "NONCE_BYTES",
    "UNAUTHENTICATED_STATUSES",
    "USERNAME_RE",
    "UUID_RE",
    "WIRE_VERSION",
    "Recipient",
    "Reply",
    "RequestEnvelope",
    "Status",
    "WireError",
    "correlation_of",
    "decode_reply",
    "decode_request",
    "encode_reply",
    "encode_request",
    "publisher_of",
    "reply_message",
    "request_message",
]

WIRE_VERSION: Final = 1
MAX_RECIPIENTS: Final = 40  # docs/design.md §3.1: at most 40 registered agents per tenant
MAX_USERNAME_CHARS: Final = 1024
MAX_DETAIL_CHARS: Final = 200
NONCE_BYTES: Final = 12  # AES-GCM 96-bit nonce (NIST SP 800-38D section 5.2.1.1)
GCM_TAG_BYTES: Final = 16
MAX_CIPHERTEXT_BYTES: Final = 8 * 1024
MAX_REQUEST_BYTES: Final = 64 * 1024  # see the module docstring for the computation
MAX_REPLY_BYTES: Final = 4 * 1024
CONTENT_TYPE: Final = "application/json"

# Longest prefix of foreign input (e.g. an unknown field name msgspec quotes) that may
# appear in a WireError message: enough to debug, never a dump of the body.
_MAX_ECHO_CHARS: Final = 160

# Patterns end in \Z, not $: msgspec applies them with re.search, and $ also matches
# before a trailing newline ("alice\n" would pass).
UUID_RE: Final = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
USERNAME_RE: Final = re.compile(r"^[^\x00-\x1f\x7f]+\Z")  # plus MAX_USERNAME_CHARS

Uuid = Annotated[str, msgspec.Meta(pattern=UUID_RE.pattern)]
Kid = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{43}\Z")]
Username = Annotated[
    str,
    msgspec.Meta(min_length=1, max_length=MAX_USERNAME_CHARS, pattern=USERNAME_RE.pattern),
]
UnixTime = Annotated[float, msgspec.Meta(gt=0, lt=1e10)]
Nonce = Annotated[bytes, msgspec.Meta(min_length=NONCE_BYTES, max_length=NONCE_BYTES)]
Ciphertext = Annotated[
    bytes, msgspec.Meta(min_length=GCM_TAG_BYTES, max_length=MAX_CIPHERTEXT_BYTES)
]
WrappedKey = Annotated[bytes, msgspec.Meta(min_length=256, max_length=512)]
Detail = Annotated[str, msgspec.Meta(max_length=MAX_DETAIL_CHARS)]
ElapsedMs = Annotated[float, msgspec.Meta(ge=0, le=3_600_000)]
Mac = Annotated[str, msgspec.Meta(pattern=r"^(?:[A-Za-z0-9+/]{43}=)?\Z")]


class WireError(DocumentedError):
    """A message is not a valid version-1 PTA message and was refused."""

    detail_separator = ": "

    def shown_detail(self, detail: str) -> str:
        """At most `_MAX_ECHO_CHARS` of what the peer sent are echoed."""
        return detail[:_MAX_ECHO_CHARS] + "..." if len(detail) > _MAX_ECHO_CHARS else detail


class Status(enum.StrEnum):
    """An agent's answer to one request (docs/design.md §5)."""

    SUCCESS = "success"
    INVALID_CREDENTIALS = "invalid_credentials"
    PASSWORD_EXPIRED = "password_expired"  # noqa: S105 -- a status name, not a password
    MUST_CHANGE_PASSWORD = "must_change_password"  # noqa: S105 -- a status name, not a password
    ACCOUNT_LOCKED = "account_locked"
    ACCOUNT_DISABLED = "account_disabled"
    ACCOUNT_EXPIRED = "account_expired"
    LOGON_HOURS = "logon_hours"
    INVALID_USERNAME = "invalid_username"
    DIRECTORY_UNAVAILABLE = "directory_unavailable"
    DIRECTORY_TIMEOUT = "directory_timeout"
    DECRYPT_FAILED = "decrypt_failed"
    KEY_NOT_FOUND = "key_not_found"
    AGENT_ERROR = "agent_error"


# An agent that cannot unwrap or open the envelope never learns the reply key, so these
# replies carry an empty `mac`. They can only make a sign-in fail (docs/design.md §3.3).
UNAUTHENTICATED_STATUSES: Final = frozenset(
    {Status.DECRYPT_FAILED, Status.KEY_NOT_FOUND, Status.AGENT_ERROR}
)


class Recipient(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The content key wrapped (RSA-OAEP, SHA-256) for one agent, found by its key id."""

    kid: Kid
    key: WrappedKey


class RequestEnvelope(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A password validation request: the password sealed for every agent of the tenant."""

    v: Literal[1]
    request_id: Uuid
    tenant_id: Uuid
    username: Username
    issued_at: UnixTime
    expires_at: UnixTime
    nonce: Nonce
    ciphertext: Ciphertext
    recipients: Annotated[
        tuple[Recipient, ...], msgspec.Meta(min_length=1, max_length=MAX_RECIPIENTS)
    ]


class Reply(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An agent's answer, MAC'd with the request's reply key (see `envelope.reply_mac`)."""

    v: Literal[1]
    request_id: Uuid
    agent_id: Uuid
    kid: Kid
    status: Status
    detail: Detail
    elapsed_ms: ElapsedMs
    mac: Mac


_T = TypeVar("_T")

_ENCODER: Final = msgspec.json.Encoder()
_REQUEST_DECODER: Final = msgspec.json.Decoder(RequestEnvelope)
_REPLY_DECODER: Final = msgspec.json.Decoder(Reply)


def encode_request(env: RequestEnvelope) -> bytes:
    """Serialise a request envelope to its JSON body.

    Does not re-validate: `envelope.seal` builds envelopes within the limits above.
    """
    return _ENCODER.encode(env)


def decode_request(body: bytes) -> RequestEnvelope:
    """Parse and validate a request body taken from the tenant queue.

    Raises `WireError` for anything but a valid version-1 request (see module docstring).
    """
    if len(body) > MAX_REQUEST_BYTES:
        raise WireError(f"request body of {len(body)} bytes exceeds {MAX_REQUEST_BYTES}")
    env = _decode(_REQUEST_DECODER, body)
    kids = {r.kid for r in env.recipients}
    if len(kids) != len(env.recipients):
        # Two wrapped keys for one agent would make `open_` depend on list order.
        raise WireError("recipients list one kid twice")
    return env


def encode_reply(reply: Reply) -> bytes:
    """Serialise a reply, refusing one the STS would reject.

    Raises `WireError` if the reply breaks a wire limit (e.g. `detail` too long), so the
    agent learns it here instead of the sign-in silently timing out at the STS.
    """
    body = _ENCODER.encode(reply)
    decode_reply(body)  # ~1 us; replies are rare next to an LDAP bind
    return body


def decode_reply(body: bytes) -> Reply:
    """Parse and validate a reply body taken from the STS instance's reply queue.

    Raises `WireError` for anything but a valid version-1 reply. A valid reply is not yet
    authentic: check it with `envelope.verify_reply`.
    """
    if len(body) > MAX_REPLY_BYTES:
        raise WireError(f"reply body of {len(body)} bytes exceeds {MAX_REPLY_BYTES}")
    reply = _decode(_REPLY_DECODER, body)
    if not reply.mac and reply.status not in UNAUTHENTICATED_STATUSES:
        raise WireError(f"a reply with status {reply.status} must carry a mac")
    return reply


def _decode(decoder: msgspec.json.Decoder[_T], body: bytes) -> _T:
    """Run a msgspec decoder, turning every parse failure into one `WireError`."""
    try:
        return decoder.decode(body)
    except msgspec.DecodeError as exc:  # ValidationError is a subclass
        raise WireError(str(exc)) from None
    except UnicodeDecodeError:  # msgspec lets invalid UTF-8 in strings through as this
        raise WireError("body is not valid UTF-8") from None


TRACE_HEADER = "x-pta-trace-id"
"""AMQP header carrying the sign-in's HTTP correlation id to the agent, for its logs only.

The request id (message_id, correlation_id) is made by the STS per dispatch: a client's
`client-request-id` must never key the pending map or the agents' replay caches. The
trace id lets one id, the one the user sees on the error page, find both sides' log lines.
"""
_TRACE_RE = re.compile(r"[0-9A-Za-z._:-]{1,64}\Z")


def request_message(
    env: RequestEnvelope,
    *,
    reply_to: str,
    correlation_id: str,
    expiration_s: float,
    publisher: str,
    trace_id: str | None = None,
) -> aio_pika.Message:
    """Wrap a request for publishing to `pta.tenant.<tenant id>` (docs/design.md §3.3, step 2).

    `message_id` and `correlation_id` are the request id; `correlation_id` must equal
    `env.request_id` (docs/design.md fixes it). `expiration_s` (the time left to the deadline)
    becomes the per-message TTL, which aio-pika truncates to whole milliseconds; the
    message is not persistent: a sign-in is useless after its deadline. `publisher` is the
    publishing connection's broker user, sent as the AMQP `user_id`: RabbitMQ refuses a
    `user_id` that is not the connection's user (the channel closes with
    PRECONDITION_FAILED), so agents can tell requests the STS published from copies
    anyone else published (`publisher_of`).

    Raises `ValueError` if `correlation_id` is not the request id or the deadline passed.
    """
    if correlation_id != env.request_id:
        raise ValueError("correlation_id must be the request id (docs/design.md §3.3)")
    if not (math.isfinite(expiration_s) and expiration_s > 0):
        raise ValueError("expiration_s must be positive and finite: the deadline has passed")
    headers: dict[str, aio_pika.abc.FieldValue] | None = (
        {TRACE_HEADER: trace_id} if trace_id and _TRACE_RE.match(trace_id) else None
    )
    return aio_pika.Message(
        encode_request(env),
        content_type=CONTENT_TYPE,
        message_id=env.request_id,
        correlation_id=correlation_id,
        reply_to=reply_to,
        user_id=publisher,
        expiration=expiration_s,
        delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
        headers=headers,
    )


def reply_message(reply: Reply, *, correlation_id: str) -> aio_pika.Message:
    """Wrap a reply for publishing to `pta.replies` with the request's `reply_to` as key.

    `correlation_id` is the incoming request's (see `correlation_of`). Not persistent, like
    the request. Raises `WireError` as `encode_reply` does.
    """
    return aio_pika.Message(
        encode_reply(reply),
        content_type=CONTENT_TYPE,
        message_id=reply.request_id,
        correlation_id=correlation_id,
        delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
    )


def trace_of(message: aio_pika.abc.AbstractIncomingMessage) -> str | None:
    """The sign-in's HTTP correlation id carried for logging, if present and well formed."""
    value = (message.headers or {}).get(TRACE_HEADER)
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    if isinstance(value, str) and _TRACE_RE.match(value):
        return value
    return None


def publisher_of(message: aio_pika.abc.AbstractIncomingMessage) -> str | None:
    """The broker user that published the message (AMQP `user_id`, checked by RabbitMQ
    against the publishing connection), or None when the publisher did not set it."""
    value = message.user_id
    return value if isinstance(value, str) and value else None


def correlation_of(message: aio_pika.abc.AbstractIncomingMessage) -> str | None:
    """Return the message's correlation id if it is a request id (a canonical UUID).

    None means absent or malformed: there is no pending request it could match. The STS
    still checks that the decoded reply's `request_id` equals it.
    """
    cid = message.correlation_id
    if isinstance(cid, str) and UUID_RE.match(cid):
        return cid
    return None
