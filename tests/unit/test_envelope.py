"""Envelope crypto (common.envelope): seal/open, canonical encodings, tampering, freshness,
reply MACs, and the rule that no secret reaches an exception (docs/design.md §7).

Pure: keys are generated in memory once per module; no I/O, no clock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import traceback
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from common import envelope, wire
from common.envelope import (
    DecryptFailed,
    EnvelopeError,
    EnvelopeExpired,
    EnvelopeLifetimeInvalid,
    KeyNotFound,
)
from common.wire import Recipient, Reply, RequestEnvelope, Status

REQUEST_ID = "00000000-0000-4000-8000-000000000001"
TENANT_ID = "11111111-1111-4111-8111-111111111111"
AGENT_ID = "22222222-2222-4222-8222-222222222222"
OTHER_ID = "33333333-3333-4333-8333-333333333333"
USERNAME = "alice@contoso.test"
ISSUED_AT = 1700000000.0
EXPIRES_AT = 1700000010.0
# A marker that must never appear in any exception text, repr or traceback.
PASSWORD = "PW-MARKER-9f2c41-correct horse"
REPLY_KEY = bytes(range(100, 132))


@pytest.fixture(scope="module")
def keys() -> list[RSAPrivateKey]:
    return [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3)]


@pytest.fixture(scope="module")
def kids(keys: list[RSAPrivateKey]) -> list[str]:
    return [envelope.kid_for(k.public_key()) for k in keys]


@pytest.fixture(scope="module")
def sealed(keys: list[RSAPrivateKey], kids: list[str]) -> RequestEnvelope:
    return seal_for(keys, kids)


def seal_for(keys: list[RSAPrivateKey], kids: list[str], **changes: Any) -> RequestEnvelope:
    args: dict[str, Any] = {
        "password": PASSWORD,
        "reply_key": REPLY_KEY,
        "recipients": [(kid, k.public_key()) for kid, k in zip(kids, keys, strict=True)],
        "request_id": REQUEST_ID,
        "tenant_id": TENANT_ID,
        "username": USERNAME,
        "issued_at": ISSUED_AT,
        "expires_at": EXPIRES_AT,
    }
    args.update(changes)
    return envelope.seal(**args)


def flip(data: bytes, index: int = 0) -> bytes:
    """The same bytes with one bit changed."""
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def assert_no_secret(exc: BaseException) -> None:
    text = "".join(traceback.format_exception(exc)) + str(exc) + repr(exc)
    assert "PW-MARKER" not in text
    assert base64.b64encode(REPLY_KEY).decode() not in text
    assert repr(REPLY_KEY) not in text


# --- round trip -------------------------------------------------------------------------


def test_every_recipient_opens_its_copy(
    sealed: RequestEnvelope, keys: list[RSAPrivateKey], kids: list[str]
) -> None:
    for key, kid in zip(keys, kids, strict=True):
        opened = envelope.open_(sealed, key, kid)
        assert opened.password == PASSWORD
        assert opened.reply_key == REPLY_KEY


def test_round_trip_through_the_wire(
    sealed: RequestEnvelope, keys: list[RSAPrivateKey], kids: list[str]
) -> None:
    received = wire.decode_request(wire.encode_request(sealed))
    assert received == sealed
    assert envelope.open_(received, keys[1], kids[1]).password == PASSWORD


def test_unicode_and_empty_passwords_survive(keys: list[RSAPrivateKey], kids: list[str]) -> None:
    for password in ["", "pässwörd 密码 🔑", 'quote " backslash \\ nul \x00', "x" * 1000]:
        env = seal_for(keys[:1], kids[:1], password=password)
        assert envelope.open_(env, keys[0], kids[0]).password == password


def test_each_seal_uses_a_fresh_key_and_nonce(keys: list[RSAPrivateKey], kids: list[str]) -> None:
    a = seal_for(keys[:1], kids[:1])
    b = seal_for(keys[:1], kids[:1])
    assert a.nonce != b.nonce
    assert a.ciphertext != b.ciphertext
    assert a.recipients[0].key != b.recipients[0].key


def test_seal_conforms_to_design_v1(
    sealed: RequestEnvelope, keys: list[RSAPrivateKey], kids: list[str]
) -> None:
    """Opens the envelope with the primitives docs/design.md names, not with `open_`."""
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    assert sealed.v == 1
    assert [r.kid for r in sealed.recipients] == kids
    content_key = keys[0].decrypt(sealed.recipients[0].key, oaep)
    assert len(content_key) == 32
    assert len(sealed.nonce) == 12
    aad = envelope.request_aad(
        v=1, request_id=REQUEST_ID, tenant_id=TENANT_ID, username=USERNAME, expires_at=EXPIRES_AT
    )
    plaintext = json.loads(AESGCM(content_key).decrypt(sealed.nonce, sealed.ciphertext, aad))
    assert plaintext == {"password": PASSWORD, "reply_key": base64.b64encode(REPLY_KEY).decode()}


def test_kid_is_b64url_sha256_of_spki(keys: list[RSAPrivateKey], kids: list[str]) -> None:
    der = (
        keys[0]
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    expected = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")
    assert kids[0] == expected
    assert len(kids[0]) == 43
    assert len(set(kids)) == 3


def test_new_reply_key() -> None:
    a, b = envelope.new_reply_key(), envelope.new_reply_key()
    assert len(a) == len(b) == 32
    assert a != b


# --- canonical encodings (known answers: a change here is a wire-format change) ----------


def test_request_aad_known_answer() -> None:
    aad = envelope.request_aad(
        v=1,
        request_id=REQUEST_ID,
        tenant_id=TENANT_ID,
        username="josé@contoso.test",
        expires_at=1700000010.5,
    )
    assert aad == (
        b"\x00\x00\x00\x0f" + b"pta.request.aad"
        + b"\x00\x00\x00\x01"
        + b"\x00\x00\x00\x24" + b"00000000-0000-4000-8000-000000000001"
        + b"\x00\x00\x00\x24" + b"11111111-1111-4111-8111-111111111111"
        + b"\x00\x00\x00\x12" + "josé@contoso.test".encode()  # 18 UTF-8 bytes, 17 characters
        + bytes.fromhex("41d954fc42a00000")  # 1700000010.5 as a big-endian IEEE-754 double
    )  # fmt: skip


def test_request_aad_is_injective_across_field_boundaries() -> None:
    a = envelope.request_aad(v=1, request_id="ab", tenant_id="c", username="d", expires_at=1.0)
    b = envelope.request_aad(v=1, request_id="a", tenant_id="bc", username="d", expires_at=1.0)
    assert a != b


def test_reply_mac_known_answer() -> None:
    key = bytes(range(32))
    message = (
        b"\x00\x00\x00\x0d" + b"pta.reply.mac"
        + b"\x00\x00\x00\x24" + REQUEST_ID.encode()
        + b"\x00\x00\x00\x24" + AGENT_ID.encode()
        + b"\x00\x00\x00\x07" + b"success"
    )  # fmt: skip
    expected = "sSpuVY0iALD6K25k0dqsYroMSvFdJuQMSqMSbMXBJi8="
    assert base64.b64encode(hmac.digest(key, message, "sha256")).decode() == expected
    assert envelope.reply_mac(key, REQUEST_ID, AGENT_ID, Status.SUCCESS) == expected
    assert (
        envelope.reply_mac(key, REQUEST_ID, AGENT_ID, Status.INVALID_CREDENTIALS)
        == "OA81RM69YP+sh3VczcYYomh1my9ebaHmcG2SrGs4KUM="
    )


# --- tampering: every bound field ----------------------------------------------------------

Tamper = Callable[[RequestEnvelope], RequestEnvelope]


def _replace(**changes: Any) -> Tamper:
    return lambda env: msgspec.structs.replace(env, **changes)


def _edit(fn: Callable[[RequestEnvelope], dict[str, Any]]) -> Tamper:
    return lambda env: msgspec.structs.replace(env, **fn(env))


def _recipients(fn: Callable[[tuple[Recipient, ...]], tuple[Recipient, ...]]) -> Tamper:
    return lambda env: msgspec.structs.replace(env, recipients=fn(env.recipients))


def _rekey(index: int, key: Callable[[tuple[Recipient, ...]], bytes]) -> Tamper:
    def fn(rs: tuple[Recipient, ...]) -> tuple[Recipient, ...]:
        changed = msgspec.structs.replace(rs[index], key=key(rs))
        return (*rs[:index], changed, *rs[index + 1 :])

    return _recipients(fn)


TAMPERING: list[tuple[str, Tamper, type[EnvelopeError]]] = [
    ("v", _replace(v=2), DecryptFailed),
    ("request_id", _replace(request_id=OTHER_ID), DecryptFailed),
    ("tenant_id", _replace(tenant_id=OTHER_ID), DecryptFailed),
    ("username", _replace(username="mallory@contoso.test"), DecryptFailed),
    ("username case", _replace(username="Alice@contoso.test"), DecryptFailed),
    ("expires_at +1 s", _replace(expires_at=EXPIRES_AT + 1), DecryptFailed),
    ("expires_at +1 ulp", _replace(expires_at=math.nextafter(EXPIRES_AT, math.inf)), DecryptFailed),
    ("nonce", _edit(lambda e: {"nonce": flip(e.nonce)}), DecryptFailed),
    ("nonce short", _edit(lambda e: {"nonce": e.nonce[:8]}), DecryptFailed),
    ("ciphertext body", _edit(lambda e: {"ciphertext": flip(e.ciphertext)}), DecryptFailed),
    ("ciphertext tag", _edit(lambda e: {"ciphertext": flip(e.ciphertext, -1)}), DecryptFailed),
    ("ciphertext cut", _edit(lambda e: {"ciphertext": e.ciphertext[:-1]}), DecryptFailed),
    ("own wrapped key", _rekey(0, lambda rs: flip(rs[0].key, 100)), DecryptFailed),
    ("wrapped key of another agent", _rekey(0, lambda rs: rs[1].key), DecryptFailed),
    ("wrapped key truncated", _rekey(0, lambda rs: rs[0].key[:-1]), DecryptFailed),
    ("kid", _recipients(lambda rs: (Recipient(kid="A" * 43, key=rs[0].key), *rs[1:])), KeyNotFound),
    ("recipient removed", _recipients(lambda rs: rs[1:]), KeyNotFound),
]


@pytest.mark.parametrize(
    ("case", "tamper", "error"), TAMPERING, ids=[case for case, _, _ in TAMPERING]
)
def test_tampering_is_detected(
    case: str,
    tamper: Tamper,
    error: type[EnvelopeError],
    sealed: RequestEnvelope,
    keys: list[RSAPrivateKey],
    kids: list[str],
) -> None:
    with pytest.raises(error) as info:
        envelope.open_(tamper(sealed), keys[0], kids[0])
    assert type(info.value) is error
    assert_no_secret(info.value)
    # One indistinguishable failure: no OAEP-vs-GCM cause in the traceback (oracle hygiene).
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or info.value.__suppress_context__


@pytest.mark.parametrize("index", [0, 1, 2])
def test_each_recipient_key_is_checked_by_its_owner_only(
    index: int, sealed: RequestEnvelope, keys: list[RSAPrivateKey], kids: list[str]
) -> None:
    tampered = _rekey(index, lambda rs: flip(rs[index].key, 7))(sealed)
    for i, (key, kid) in enumerate(zip(keys, kids, strict=True)):
        if i == index:
            with pytest.raises(DecryptFailed):
                envelope.open_(tampered, key, kid)
        else:
            assert envelope.open_(tampered, key, kid).password == PASSWORD


def test_issued_at_is_not_bound_by_design(
    sealed: RequestEnvelope, keys: list[RSAPrivateKey], kids: list[str]
) -> None:
    """docs/design.md binds v, ids, username and expires_at only; check_fresh bounds the rest."""
    moved = msgspec.structs.replace(sealed, issued_at=ISSUED_AT - 5)
    assert envelope.open_(moved, keys[0], kids[0]).password == PASSWORD


def test_ciphertext_spliced_from_another_request_fails(
    sealed: RequestEnvelope, keys: list[RSAPrivateKey], kids: list[str]
) -> None:
    other = seal_for(keys, kids, request_id=OTHER_ID)
    spliced = msgspec.structs.replace(
        sealed, request_id=OTHER_ID, nonce=other.nonce, ciphertext=other.ciphertext
    )
    with pytest.raises(DecryptFailed):
        envelope.open_(spliced, keys[0], kids[0])


def test_wrong_private_key(
    sealed: RequestEnvelope, keys: list[RSAPrivateKey], kids: list[str]
) -> None:
    with pytest.raises(DecryptFailed) as info:
        envelope.open_(sealed, keys[1], kids[0])
    assert_no_secret(info.value)


def test_not_a_recipient(sealed: RequestEnvelope, keys: list[RSAPrivateKey]) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(KeyNotFound) as info:
        envelope.open_(sealed, stranger, envelope.kid_for(stranger.public_key()))
    assert_no_secret(info.value)


def test_errors_carry_their_reply_status_and_docstring() -> None:
    assert KeyNotFound.status is Status.KEY_NOT_FOUND
    assert DecryptFailed.status is Status.DECRYPT_FAILED
    assert EnvelopeExpired.status is Status.AGENT_ERROR
    for cls in (KeyNotFound, DecryptFailed, EnvelopeExpired, EnvelopeLifetimeInvalid):
        assert issubclass(cls, EnvelopeError)
        assert str(cls()) == cls.__doc__


# --- freshness ------------------------------------------------------------------------------


@pytest.mark.parametrize("now", [ISSUED_AT - 29, ISSUED_AT, EXPIRES_AT - 0.001])
def test_fresh(now: float, sealed: RequestEnvelope) -> None:
    envelope.check_fresh(sealed, now)


@pytest.mark.parametrize("now", [EXPIRES_AT, EXPIRES_AT + 0.001, EXPIRES_AT + 86400])
def test_expired(now: float, sealed: RequestEnvelope) -> None:
    with pytest.raises(EnvelopeExpired):
        envelope.check_fresh(sealed, now)


@pytest.mark.parametrize(
    ("issued_at", "expires_at", "now"),
    [
        (ISSUED_AT + 31, ISSUED_AT + 41, ISSUED_AT),  # issued beyond the clock skew
        (ISSUED_AT, ISSUED_AT + 121, ISSUED_AT),  # lifetime over 120 s
        (ISSUED_AT, ISSUED_AT + 10, ISSUED_AT - 1000),  # deadline far ahead of our clock
        (ISSUED_AT + 10, ISSUED_AT + 10, ISSUED_AT),  # empty window
        (ISSUED_AT + 20, ISSUED_AT + 10, ISSUED_AT),  # reversed window
    ],
)
def test_implausible_window(
    issued_at: float, expires_at: float, now: float, sealed: RequestEnvelope
) -> None:
    env = msgspec.structs.replace(sealed, issued_at=issued_at, expires_at=expires_at)
    with pytest.raises(EnvelopeLifetimeInvalid):
        envelope.check_fresh(env, now)


# --- reply MAC ------------------------------------------------------------------------------


def make_reply(reply_key: bytes = REPLY_KEY, **changes: Any) -> Reply:
    fields: dict[str, Any] = {
        "v": 1,
        "request_id": REQUEST_ID,
        "agent_id": AGENT_ID,
        "kid": "A" * 43,
        "status": Status.SUCCESS,
        "detail": "",
        "elapsed_ms": 1.7,
    }
    fields.update(changes)
    mac = envelope.reply_mac(reply_key, fields["request_id"], fields["agent_id"], fields["status"])
    return Reply(mac=mac, **fields)


def test_reply_mac_verifies() -> None:
    reply = wire.decode_reply(wire.encode_reply(make_reply()))
    assert envelope.verify_reply(reply, REPLY_KEY)


@pytest.mark.parametrize(
    "forged",
    [
        make_reply(reply_key=bytes(32)),  # another key: another request or a guess
        msgspec.structs.replace(make_reply(), agent_id=OTHER_ID),
        msgspec.structs.replace(make_reply(), request_id=OTHER_ID),
        msgspec.structs.replace(make_reply(), status=Status.INVALID_CREDENTIALS),
        msgspec.structs.replace(make_reply(status=Status.ACCOUNT_LOCKED), status=Status.SUCCESS),
        msgspec.structs.replace(make_reply(), mac=""),
        msgspec.structs.replace(make_reply(), mac="A" * 43 + "="),
        msgspec.structs.replace(make_reply(), mac="é"),  # not ASCII: still just False
    ],
    ids=[
        "other key",
        "other agent",
        "other request",
        "other status",
        "failure turned success",
        "empty",
        "wrong",
        "non-ascii",
    ],
)
def test_forged_reply_fails(forged: Reply) -> None:
    assert not envelope.verify_reply(forged, REPLY_KEY)


# --- secrets never leak -----------------------------------------------------------------------


def test_opened_repr_hides_secrets(
    sealed: RequestEnvelope, keys: list[RSAPrivateKey], kids: list[str]
) -> None:
    opened = envelope.open_(sealed, keys[0], kids[0])
    assert "PW-MARKER" not in repr(opened)
    assert repr(REPLY_KEY) not in repr(opened)


@pytest.mark.parametrize(
    "changes",
    [
        {"password": PASSWORD + "\ud800"},  # lone surrogate: not encodable
        {"password": PASSWORD * 1000},  # too long for the envelope
        {"reply_key": REPLY_KEY[:16]},
        {"recipients": []},
        {"request_id": REQUEST_ID.replace("0", "A")},
        {"tenant_id": "contoso"},
        {"username": "alice\x00"},
        {"username": "a" * 1025},
        {"expires_at": ISSUED_AT},
        {"expires_at": math.nan},
    ],
    ids=[
        "surrogate password",
        "long password",
        "short reply key",
        "no recipients",
        "uppercase request id",
        "tenant not uuid",
        "NUL username",
        "long username",
        "empty window",
        "nan deadline",
    ],
)
def test_seal_refuses_bad_input_without_leaking(
    changes: dict[str, Any], keys: list[RSAPrivateKey], kids: list[str]
) -> None:
    with pytest.raises(ValueError) as info:
        seal_for(keys[:1], kids[:1], **changes)
    assert_no_secret(info.value)
    assert info.value.__cause__ is None


def test_seal_refuses_41_recipients(keys: list[RSAPrivateKey], kids: list[str]) -> None:
    with pytest.raises(ValueError):
        envelope.seal(
            password=PASSWORD,
            reply_key=REPLY_KEY,
            recipients=[(kids[0], keys[0].public_key())] * 41,
            request_id=REQUEST_ID,
            tenant_id=TENANT_ID,
            username=USERNAME,
            issued_at=ISSUED_AT,
            expires_at=EXPIRES_AT,
        )
