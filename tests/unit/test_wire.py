"""Wire format version 1 (common.wire): round trips, AMQP properties, hostile bodies.

Pure: no broker, no crypto. Envelopes here hold well-formed but meaningless bytes; the
crypto is tested in test_envelope.py.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any, cast

import aio_pika
import aio_pika.abc
import orjson
import pytest

from common import wire
from common.wire import Recipient, Reply, RequestEnvelope, Status, WireError

REQUEST_ID = "0a1b2c3d-0000-4000-8000-00000000abcd"
TENANT_ID = "11111111-1111-4111-8111-111111111111"
AGENT_ID = "22222222-2222-4222-8222-222222222222"
MAC = base64.b64encode(bytes(32)).decode()


def kid(i: int) -> str:
    """A well-formed key id (43 base64url characters), distinct per i."""
    return base64.urlsafe_b64encode(i.to_bytes(32, "big")).rstrip(b"=").decode()


def make_request(n_recipients: int = 3) -> RequestEnvelope:
    return RequestEnvelope(
        v=1,
        request_id=REQUEST_ID,
        tenant_id=TENANT_ID,
        username="alice@contoso.test",
        issued_at=1700000000.0,
        expires_at=1700000010.0,
        nonce=bytes(12),
        ciphertext=bytes(80),
        recipients=tuple(Recipient(kid=kid(i), key=bytes(256)) for i in range(n_recipients)),
    )


def make_reply(**changes: Any) -> Reply:
    fields: dict[str, Any] = {
        "v": 1,
        "request_id": REQUEST_ID,
        "agent_id": AGENT_ID,
        "kid": kid(0),
        "status": Status.SUCCESS,
        "detail": "",
        "elapsed_ms": 1.7,
        "mac": MAC,
    }
    fields.update(changes)
    return Reply(**fields)


def request_json(mutate: Callable[[dict[str, Any]], object]) -> bytes:
    """A valid request body as a dict, changed by `mutate`, re-encoded."""
    doc = orjson.loads(wire.encode_request(make_request()))
    mutate(doc)
    return orjson.dumps(doc)


def reply_json(mutate: Callable[[dict[str, Any]], object]) -> bytes:
    doc = orjson.loads(wire.encode_reply(make_reply()))
    mutate(doc)
    return orjson.dumps(doc)


def test_status_is_exactly_the_design_table() -> None:
    assert {s.value for s in Status} == {
        "success",
        "invalid_credentials",
        "password_expired",
        "must_change_password",
        "account_locked",
        "account_disabled",
        "account_expired",
        "logon_hours",
        "invalid_username",
        "directory_unavailable",
        "directory_timeout",
        "decrypt_failed",
        "key_not_found",
        "agent_error",
    }


@pytest.mark.parametrize("n", [1, 3, 40])
def test_request_round_trip(n: int) -> None:
    env = make_request(n)
    assert wire.decode_request(wire.encode_request(env)) == env


def test_request_json_shape_is_design_v1() -> None:
    doc = orjson.loads(wire.encode_request(make_request(1)))
    assert list(doc) == [
        "v",
        "request_id",
        "tenant_id",
        "username",
        "issued_at",
        "expires_at",
        "nonce",
        "ciphertext",
        "recipients",
    ]
    assert doc["v"] == 1
    assert base64.b64decode(doc["nonce"], validate=True) == bytes(12)
    assert doc["recipients"] == [{"kid": kid(0), "key": base64.b64encode(bytes(256)).decode()}]


def test_request_accepts_integer_timestamps() -> None:
    body = request_json(lambda d: d.update(issued_at=1700000000, expires_at=1700000010))
    assert wire.decode_request(body).expires_at == 1700000010.0


def test_reply_round_trip_and_shape() -> None:
    reply = make_reply()
    body = wire.encode_reply(reply)
    assert wire.decode_reply(body) == reply
    assert list(orjson.loads(body)) == [
        "v",
        "request_id",
        "agent_id",
        "kid",
        "status",
        "detail",
        "elapsed_ms",
        "mac",
    ]


@pytest.mark.parametrize("status", sorted(wire.UNAUTHENTICATED_STATUSES))
def test_reply_without_mac_allowed_only_before_the_reply_key(status: Status) -> None:
    reply = make_reply(status=status, mac="")
    assert wire.decode_reply(wire.encode_reply(reply)) == reply


def _set_recipients(d: dict[str, Any], recipients: list[Any]) -> None:
    d["recipients"] = recipients


def _recipient(i: int, **changes: Any) -> dict[str, Any]:
    r: dict[str, Any] = {"kid": kid(i), "key": base64.b64encode(bytes(256)).decode()}
    r.update(changes)
    return r


HOSTILE_REQUESTS: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("not json", b"hello"),
    ("null", b"null"),
    ("list", b"[]"),
    ("number", b"42"),
    ("string", b'"x"'),
    ("trailing garbage", wire.encode_request(make_request()) + b" x"),
    (
        "invalid utf-8",
        request_json(lambda d: d.update(username="alice")).replace(b"alice", b"\xff"),
    ),
    ("unknown field", request_json(lambda d: d.update(extra=1))),
    ("missing field", request_json(lambda d: d.pop("nonce"))),
    ("v=2", request_json(lambda d: d.update(v=2))),
    ("v=0", request_json(lambda d: d.update(v=0))),
    ("v as string", request_json(lambda d: d.update(v="1"))),
    ("v as float", request_json(lambda d: d.update(v=1.0))),
    ("v as bool", request_json(lambda d: d.update(v=True))),
    ("request_id not uuid", request_json(lambda d: d.update(request_id="42"))),
    ("request_id uppercase", request_json(lambda d: d.update(request_id=REQUEST_ID.upper()))),
    ("request_id newline", request_json(lambda d: d.update(request_id=REQUEST_ID + "\n"))),
    ("request_id braces", request_json(lambda d: d.update(request_id="{" + REQUEST_ID + "}"))),
    ("tenant_id not uuid", request_json(lambda d: d.update(tenant_id="contoso"))),
    ("tenant_id number", request_json(lambda d: d.update(tenant_id=1))),
    ("empty username", request_json(lambda d: d.update(username=""))),
    ("NUL username", request_json(lambda d: d.update(username="alice\x00@contoso.test"))),
    ("newline username", request_json(lambda d: d.update(username="alice\n"))),
    ("DEL username", request_json(lambda d: d.update(username="alice\x7f"))),
    ("10 KB username", request_json(lambda d: d.update(username="a" * 10_240))),
    ("1025-char username", request_json(lambda d: d.update(username="é" * 1025))),
    ("huge body", request_json(lambda d: d.update(username="a" * (wire.MAX_REQUEST_BYTES + 1)))),
    ("issued_at string", request_json(lambda d: d.update(issued_at="now"))),
    ("expires_at negative", request_json(lambda d: d.update(expires_at=-1))),
    ("expires_at zero", request_json(lambda d: d.update(expires_at=0))),
    ("expires_at year 3000", request_json(lambda d: d.update(expires_at=32503680000.0))),
    (
        "expires_at overflow",
        request_json(lambda d: d.update(v=1)).replace(b"1700000010.0", b"1e400"),
    ),
    ("bad b64 nonce", request_json(lambda d: d.update(nonce="!!!!!!!!!!!!!!!!"))),
    (
        "nonce 11 bytes",
        request_json(lambda d: d.update(nonce=base64.b64encode(bytes(11)).decode())),
    ),
    (
        "nonce 13 bytes",
        request_json(lambda d: d.update(nonce=base64.b64encode(bytes(13)).decode())),
    ),
    ("nonce as list", request_json(lambda d: d.update(nonce=[0] * 12))),
    ("bad b64 ciphertext", request_json(lambda d: d.update(ciphertext="a*b="))),
    ("ciphertext shorter than tag", request_json(lambda d: d.update(ciphertext="AAAA"))),
    (
        "ciphertext too long",
        request_json(lambda d: d.update(ciphertext=base64.b64encode(bytes(9000)).decode())),
    ),
    ("no recipients", request_json(lambda d: _set_recipients(d, []))),
    (
        "41 recipients",
        request_json(lambda d: _set_recipients(d, [_recipient(i) for i in range(41)])),
    ),
    ("recipients object", request_json(lambda d: d.update(recipients={"kid": kid(0)}))),
    ("recipient as list", request_json(lambda d: _set_recipients(d, [[kid(0), "AAAA"]]))),
    ("recipient unknown field", request_json(lambda d: _set_recipients(d, [_recipient(0, x=1)]))),
    ("duplicate kid", request_json(lambda d: _set_recipients(d, [_recipient(0), _recipient(0)]))),
    ("bad b64 key", request_json(lambda d: _set_recipients(d, [_recipient(0, key="%" * 344)]))),
    (
        "key 128 bytes",
        request_json(
            lambda d: _set_recipients(d, [_recipient(0, key=base64.b64encode(bytes(128)).decode())])
        ),
    ),
    ("kid padded", request_json(lambda d: _set_recipients(d, [_recipient(0, kid=kid(0) + "=")]))),
    ("kid std alphabet", request_json(lambda d: _set_recipients(d, [_recipient(0, kid="+" * 43)]))),
    ("kid empty", request_json(lambda d: _set_recipients(d, [_recipient(0, kid="")]))),
]


@pytest.mark.parametrize(("case", "body"), HOSTILE_REQUESTS, ids=[c for c, _ in HOSTILE_REQUESTS])
def test_hostile_request_is_refused(case: str, body: bytes) -> None:
    with pytest.raises(WireError) as info:
        wire.decode_request(body)
    assert len(str(info.value)) < 300, case
    assert info.value.__cause__ is None


HOSTILE_REPLIES: list[tuple[str, bytes]] = [
    ("not json", b"{"),
    ("null", b"null"),
    ("unknown field", reply_json(lambda d: d.update(tenant_id=TENANT_ID))),
    ("v=2", reply_json(lambda d: d.update(v=2))),
    ("unknown status", reply_json(lambda d: d.update(status="SUCCESS"))),
    ("agent_id not uuid", reply_json(lambda d: d.update(agent_id="agent-1"))),
    ("detail 201 chars", reply_json(lambda d: d.update(detail="d" * 201))),
    ("negative elapsed", reply_json(lambda d: d.update(elapsed_ms=-1))),
    ("success without mac", reply_json(lambda d: d.update(mac=""))),
    ("mac bad length", reply_json(lambda d: d.update(mac=MAC[:-2]))),
    ("mac not b64", reply_json(lambda d: d.update(mac="*" * 43 + "="))),
    ("huge body", reply_json(lambda d: d.update(detail="d" * wire.MAX_REPLY_BYTES))),
]


@pytest.mark.parametrize(("case", "body"), HOSTILE_REPLIES, ids=[c for c, _ in HOSTILE_REPLIES])
def test_hostile_reply_is_refused(case: str, body: bytes) -> None:
    with pytest.raises(WireError):
        wire.decode_reply(body)


def test_wire_error_echoes_only_a_short_prefix() -> None:
    marker = "SECRETMARKER"
    body = request_json(lambda d: d.update({"x" * 10_000 + marker: 1}))
    with pytest.raises(WireError) as info:
        wire.decode_request(body)
    text = str(info.value)
    assert "unknown field" in text
    assert marker not in text
    assert len(text) < 300


def test_wire_error_message_is_the_docstring() -> None:
    assert str(WireError()) == WireError.__doc__


def test_encode_reply_refuses_what_the_sts_would_refuse() -> None:
    with pytest.raises(WireError):
        wire.encode_reply(make_reply(detail="x" * (wire.MAX_DETAIL_CHARS + 1)))
    with pytest.raises(WireError):
        wire.encode_reply(make_reply(mac=""))


def test_request_message_properties() -> None:
    env = make_request()
    message = wire.request_message(
        env,
        reply_to="sts.instance-1",
        correlation_id=REQUEST_ID,
        expiration_s=10.0,
        publisher="pta-sts",
    )
    assert wire.decode_request(message.body) == env
    assert message.content_type == "application/json"
    assert message.message_id == REQUEST_ID
    assert message.correlation_id == REQUEST_ID
    assert message.reply_to == "sts.instance-1"
    assert message.expiration == 10.0
    assert message.delivery_mode == aio_pika.DeliveryMode.NOT_PERSISTENT
    assert message.user_id == "pta-sts"  # the broker checks it against the connection


@pytest.mark.parametrize(
    ("correlation_id", "expiration_s"),
    [(TENANT_ID, 10.0), (REQUEST_ID, 0.0), (REQUEST_ID, -1.0), (REQUEST_ID, float("nan"))],
)
def test_request_message_refuses_broken_contract(correlation_id: str, expiration_s: float) -> None:
    with pytest.raises(ValueError):
        wire.request_message(
            make_request(),
            reply_to="sts.instance-1",
            correlation_id=correlation_id,
            expiration_s=expiration_s,
            publisher="pta-sts",
        )


def test_reply_message_properties() -> None:
    reply = make_reply()
    message = wire.reply_message(reply, correlation_id=REQUEST_ID)
    assert wire.decode_reply(message.body) == reply
    assert message.content_type == "application/json"
    assert message.correlation_id == REQUEST_ID
    assert message.delivery_mode == aio_pika.DeliveryMode.NOT_PERSISTENT


class _Incoming:
    """Just the property `correlation_of` reads; a real IncomingMessage needs a channel."""

    def __init__(self, correlation_id: str | None) -> None:
        self.correlation_id = correlation_id


@pytest.mark.parametrize(
    ("cid", "expected"),
    [
        (REQUEST_ID, REQUEST_ID),
        (None, None),
        ("", None),
        (REQUEST_ID.upper(), None),
        (REQUEST_ID + "\n", None),
        ("x" * 10_000, None),
    ],
)
def test_correlation_of(cid: str | None, expected: str | None) -> None:
    message = cast(aio_pika.abc.AbstractIncomingMessage, _Incoming(cid))
    assert wire.correlation_of(message) == expected


def test_the_trace_id_travels_in_a_header_and_only_when_well_formed() -> None:
    import uuid as _uuid

    from common import envelope as _envelope
    from common.pki import new_rsa_key

    key = new_rsa_key()
    now = 1_700_000_000.0
    env = _envelope.seal(
        password="pw",
        reply_key=_envelope.new_reply_key(),
        recipients=[(_envelope.kid_for(key.public_key()), key.public_key())],
        request_id=str(_uuid.uuid4()),
        tenant_id=str(_uuid.uuid4()),
        username="alice@contoso.test",
        issued_at=now,
        expires_at=now + 10,
    )
    trace = str(_uuid.uuid4())
    message = wire.request_message(
        env,
        reply_to="r",
        correlation_id=env.request_id,
        expiration_s=5,
        publisher="p",
        trace_id=trace,
    )
    assert message.headers == {wire.TRACE_HEADER: trace}
    assert message.correlation_id == env.request_id  # the request id stays the STS's own
    for hostile in ("x" * 65, "a b", "<script>", "line\nbreak", ""):
        m = wire.request_message(
            env,
            reply_to="r",
            correlation_id=env.request_id,
            expiration_s=5,
            publisher="p",
            trace_id=hostile,
        )
        assert not m.headers
