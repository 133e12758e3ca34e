"""SignInHandler without I/O: real envelopes (common.envelope.seal, fresh RSA keys), a
FakeDirectory, an in-memory reply publisher and fake AMQP deliveries.

What each test pins is the contract of docs/design.md §3.3 and "Security rules": replies
carry a valid MAC exactly when the agent holds the reply key, expired and replayed
requests never reach the directory, nothing ever crashes the consumer, and the password
never reaches a log line or a reply.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any, cast

import aio_pika
import pytest
import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractMessage
from cryptography.hazmat.primitives.asymmetric import rsa
from structlog.typing import Processor

from agent.consumer import SignInHandler
from agent.directory import (
    Directory,
    DirectoryTimeout,
    DirectoryUnavailable,
    FakeDirectory,
    Verdict,
)
from agent.replay import Admission, ReplayCache
from common.envelope import kid_for, new_reply_key, seal, verify_reply
from common.wire import RequestEnvelope, Status, decode_reply, encode_request

Events = list[MutableMapping[str, Any]]
NOW = 1_800_000_000.0
TENANT_ID = str(uuid.uuid4())
AGENT_ID = str(uuid.uuid4())
REPLY_TO = "sts.instance.7f3a"
PUBLISHER = "pta-sts"  # the STS's broker user, as the bootstrap answer names it
USERNAME = "alice@contoso.test"
PASSWORD = "Pw-correct-horse-7Zq!"  # the marker searched for in logs and replies


@dataclass(frozen=True)
class Keys:
    private: rsa.RSAPrivateKey
    kid: str


def _keys() -> Keys:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return Keys(private, kid_for(private.public_key()))


@pytest.fixture(scope="module")
def agent_keys() -> Keys:
    return _keys()


@pytest.fixture(scope="module")
def other_keys() -> Keys:
    return _keys()


@dataclass
class FakeDelivery:
    """The part of aio-pika's IncomingMessage the handler uses."""

    body: bytes
    reply_to: str | None = REPLY_TO
    correlation_id: str | None = None
    message_id: str | None = None
    redelivered: bool = False
    user_id: str | None = PUBLISHER
    headers: dict[str, object] = field(default_factory=dict)
    settled: list[str] = field(default_factory=list)

    @property
    def processed(self) -> bool:
        return bool(self.settled)

    async def ack(self, multiple: bool = False) -> None:
        self.settled.append("ack")

    async def reject(self, requeue: bool = False) -> None:
        assert not requeue, "a request is never requeued (handled at most once)"
        self.settled.append("reject")


@dataclass
class Capture:
    """An in-memory ReplyPublisher."""

    sent: list[tuple[str, AbstractMessage]] = field(default_factory=list)
    error: Exception | None = None

    async def publish(self, message: AbstractMessage, routing_key: str) -> object:
        if self.error is not None:
            raise self.error
        self.sent.append((routing_key, message))
        return None

    def replies(self) -> list[Any]:
        return [decode_reply(cast(aio_pika.Message, m).body) for _, m in self.sent]


@dataclass
class Clock:
    now: float = NOW

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    handler: SignInHandler
    directory: FakeDirectory
    capture: Capture
    clock: Clock
    keys: Keys


@pytest.fixture
def rig(agent_keys: Keys) -> Rig:
    directory = FakeDirectory(
        users={
            USERNAME: (PASSWORD, Status.SUCCESS),
            "erin@contoso.test": (PASSWORD, Status.PASSWORD_EXPIRED),
        }
    )
    return _rig(agent_keys, directory)


def _rig(keys: Keys, directory: Directory) -> Rig:
    capture, clock = Capture(), Clock()
    handler = SignInHandler(
        agent_id=AGENT_ID,
        tenant_id=TENANT_ID,
        kid=keys.kid,
        private_key=keys.private,
        directory=directory,
        exchange=capture,
        publisher=PUBLISHER,
        clock=clock,
    )
    return Rig(handler, cast(FakeDirectory, directory), capture, clock, keys)


def _request(
    keys: Keys,
    *,
    username: str = USERNAME,
    password: str = PASSWORD,
    tenant_id: str = TENANT_ID,
    issued_at: float = NOW - 0.05,
    expires_at: float = NOW + 10,
) -> tuple[RequestEnvelope, bytes]:
    reply_key = new_reply_key()
    envelope = seal(
        password=password,
        reply_key=reply_key,
        recipients=[(keys.kid, keys.private.public_key())],
        request_id=str(uuid.uuid4()),
        tenant_id=tenant_id,
        username=username,
        issued_at=issued_at,
        expires_at=expires_at,
    )
    return envelope, reply_key


def _delivery(envelope: RequestEnvelope, **kwargs: Any) -> FakeDelivery:
    return FakeDelivery(
        body=encode_request(envelope),
        correlation_id=envelope.request_id,
        message_id=envelope.request_id,
        **kwargs,
    )


async def _handle(rig: Rig, delivery: FakeDelivery) -> None:
    await rig.handler(cast(AbstractIncomingMessage, delivery))


@pytest.fixture
def logs() -> Iterator[Events]:
    """Captured log events with the contextvars merged and tracebacks rendered."""
    processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.format_exc_info,
    ]
    with structlog.testing.capture_logs(processors=processors) as captured:
        yield captured


def _events(logs: Events, name: str) -> Events:
    return [e for e in logs if e["event"] == name]


# --- the happy path -------------------------------------------------------------------


async def test_success_reply_has_a_valid_mac_and_is_acked(rig: Rig, logs: Events) -> None:
    envelope, reply_key = _request(rig.keys)
    delivery = _delivery(envelope)
    await _handle(rig, delivery)

    [(routing_key, message)] = rig.capture.sent
    assert routing_key == REPLY_TO
    assert message.correlation_id == envelope.request_id
    [reply] = rig.capture.replies()
    assert (reply.status, reply.request_id, reply.agent_id, reply.kid) == (
        Status.SUCCESS,
        envelope.request_id,
        AGENT_ID,
        rig.keys.kid,
    )
    assert verify_reply(reply, reply_key)
    assert reply.elapsed_ms >= 0
    assert delivery.settled == ["ack"]
    assert rig.directory.calls == [USERNAME]

    [summary] = _events(logs, "password_validated")
    assert summary["status"] == "success"
    assert summary["correlation_id"] == envelope.request_id
    assert summary["agent_id"] == AGENT_ID and summary["tenant_id"] == TENANT_ID
    assert summary["elapsed_ms"] == reply.elapsed_ms


async def test_a_directory_answer_travels_as_a_macd_status(rig: Rig) -> None:
    envelope, reply_key = _request(rig.keys, username="erin@contoso.test")
    await _handle(rig, _delivery(envelope))
    [reply] = rig.capture.replies()
    assert reply.status is Status.PASSWORD_EXPIRED
    assert verify_reply(reply, reply_key)


async def test_wrong_password_is_invalid_credentials(rig: Rig) -> None:
    envelope, reply_key = _request(rig.keys, password="not-it")
    await _handle(rig, _delivery(envelope))
    [reply] = rig.capture.replies()
    assert reply.status is Status.INVALID_CREDENTIALS and verify_reply(reply, reply_key)


async def test_a_mac_from_another_reply_key_does_not_verify(rig: Rig) -> None:
    envelope, _ = _request(rig.keys)
    await _handle(rig, _delivery(envelope))
    [reply] = rig.capture.replies()
    assert not verify_reply(reply, new_reply_key())


# --- refused before the directory -----------------------------------------------------


async def test_envelope_for_other_agents_is_key_not_found_without_mac(
    rig: Rig, other_keys: Keys
) -> None:
    envelope, _ = _request(other_keys)  # sealed for another agent only
    delivery = _delivery(envelope)
    await _handle(rig, delivery)
    [reply] = rig.capture.replies()
    assert reply.status is Status.KEY_NOT_FOUND and reply.mac == ""
    assert rig.directory.calls == []
    assert delivery.settled == ["ack"]


async def test_tampered_ciphertext_is_decrypt_failed_without_mac(rig: Rig) -> None:
    envelope, _ = _request(rig.keys)
    flipped = bytes([envelope.ciphertext[0] ^ 1]) + envelope.ciphertext[1:]
    tampered = RequestEnvelope(
        **{f: getattr(envelope, f) for f in envelope.__struct_fields__ if f != "ciphertext"},
        ciphertext=flipped,
    )
    await _handle(rig, _delivery(tampered))
    [reply] = rig.capture.replies()
    assert reply.status is Status.DECRYPT_FAILED and reply.mac == ""
    assert rig.directory.calls == []


async def test_tampered_username_is_decrypt_failed(rig: Rig) -> None:
    """The username is GCM associated data: swapping it cannot redirect the password."""
    envelope, _ = _request(rig.keys)
    fields = {f: getattr(envelope, f) for f in envelope.__struct_fields__}
    tampered = RequestEnvelope(**{**fields, "username": "erin@contoso.test"})
    await _handle(rig, _delivery(tampered))
    assert [r.status for r in rig.capture.replies()] == [Status.DECRYPT_FAILED]
    assert rig.directory.calls == []


async def test_expired_request_is_dropped_without_bind_or_reply(rig: Rig, logs: Events) -> None:
    envelope, _ = _request(rig.keys, expires_at=NOW + 10)
    rig.clock.now = NOW + 10.5
    delivery = _delivery(envelope)
    await _handle(rig, delivery)
    assert rig.capture.sent == []
    assert rig.directory.calls == []
    assert delivery.settled == ["reject"]
    [event] = _events(logs, "request_expired")
    assert event["correlation_id"] == envelope.request_id and event["late_s"] == 0.5
    assert rig.handler.counts["expired"] == 1


async def test_implausible_window_gets_agent_error_without_mac(rig: Rig) -> None:
    envelope, _ = _request(rig.keys, issued_at=NOW + 60, expires_at=NOW + 70)
    await _handle(rig, _delivery(envelope))
    [reply] = rig.capture.replies()
    assert reply.status is Status.AGENT_ERROR and reply.mac == ""
    assert "clock" in reply.detail
    assert rig.directory.calls == []


async def test_replayed_request_is_dropped(rig: Rig, logs: Events) -> None:
    envelope, _ = _request(rig.keys)
    first, second = _delivery(envelope), _delivery(envelope)
    await _handle(rig, first)
    await _handle(rig, second)
    assert rig.directory.calls == [USERNAME]
    assert len(rig.capture.sent) == 1
    assert (first.settled, second.settled) == (["ack"], ["reject"])
    [event] = _events(logs, "request_replayed")
    assert event["correlation_id"] == envelope.request_id


async def test_concurrent_copies_of_one_request_reach_the_directory_once(rig: Rig) -> None:
    envelope, _ = _request(rig.keys)
    await asyncio.gather(*(_handle(rig, _delivery(envelope)) for _ in range(5)))
    assert rig.directory.calls == [USERNAME]
    assert len(rig.capture.sent) == 1


async def test_redelivered_message_is_dropped(rig: Rig, logs: Events) -> None:
    """At most once: a message another agent may have started is not handled again."""
    envelope, _ = _request(rig.keys)
    delivery = _delivery(envelope, redelivered=True)
    await _handle(rig, delivery)
    assert rig.capture.sent == [] and rig.directory.calls == []
    assert delivery.settled == ["reject"]
    assert _events(logs, "request_redelivered")


@pytest.mark.parametrize("user_id", [None, "", "pta-admin", "agent-x", "pta-sts2"])
async def test_a_request_not_published_by_the_sts_is_dropped_unread(
    rig: Rig, logs: Events, user_id: str | None
) -> None:
    """Only the STS's broker user may name itself as a request's user_id (the broker
    checks it), so a copy published by anyone else reaches no directory."""
    envelope, _ = _request(rig.keys)
    delivery = _delivery(envelope, user_id=user_id)
    await _handle(rig, delivery)
    assert rig.capture.sent == [] and rig.directory.calls == []
    assert delivery.settled == ["reject"]
    assert rig.handler.counts["not_from_sts"] == 1
    assert _events(logs, "request_not_from_sts")


async def test_a_handler_without_a_publisher_yet_handles_nothing(agent_keys: Keys) -> None:
    rig = _rig(agent_keys, FakeDirectory(users={USERNAME: (PASSWORD, Status.SUCCESS)}))
    rig.handler.publisher = ""
    envelope, _ = _request(agent_keys)
    await _handle(rig, _delivery(envelope))
    assert rig.capture.sent == [] and rig.directory.calls == []


async def test_request_for_another_tenant_is_refused(rig: Rig) -> None:
    envelope, _ = _request(rig.keys, tenant_id=str(uuid.uuid4()))
    await _handle(rig, _delivery(envelope))
    [reply] = rig.capture.replies()
    assert reply.status is Status.AGENT_ERROR and reply.mac == ""
    assert rig.directory.calls == []


async def test_full_replay_cache_fails_closed(agent_keys: Keys) -> None:
    rig = _rig(agent_keys, FakeDirectory(users={USERNAME: (PASSWORD, Status.SUCCESS)}))
    rig.handler.replay = ReplayCache(max_entries=1)
    for _ in range(2):
        envelope, _ = _request(rig.keys)
        await _handle(rig, _delivery(envelope))
    assert [r.status for r in rig.capture.replies()] == [Status.SUCCESS, Status.AGENT_ERROR]
    assert rig.directory.calls == [USERNAME]


async def test_without_reply_to_nothing_is_validated(rig: Rig) -> None:
    envelope, _ = _request(rig.keys)
    delivery = _delivery(envelope, reply_to=None)
    await _handle(rig, delivery)
    assert rig.directory.calls == [] and rig.capture.sent == []
    assert delivery.settled == ["reject"]


# --- garbage never crashes the consumer -----------------------------------------------

GARBAGE = [
    b"",
    b"not json",
    b"\xff\xfe\x00garbage",
    b'{"v": 2}',
    b"[]",
    b'{"v": 1, "request_id": "x", "extra": true}',
    b"{" * 100_000,
]


@pytest.mark.parametrize("body", GARBAGE, ids=lambda b: repr(b[:12]))
async def test_garbage_with_a_request_id_gets_agent_error_and_is_rejected(
    rig: Rig, body: bytes
) -> None:
    request_id = str(uuid.uuid4())
    delivery = FakeDelivery(body=body, correlation_id=request_id)
    await _handle(rig, delivery)
    [reply] = rig.capture.replies()
    assert (reply.status, reply.request_id, reply.mac) == (Status.AGENT_ERROR, request_id, "")
    assert delivery.settled == ["reject"]
    assert rig.handler.counts["undecodable"] == 1


@pytest.mark.parametrize("body", GARBAGE, ids=lambda b: repr(b[:12]))
async def test_garbage_without_a_request_id_is_only_rejected(rig: Rig, body: bytes) -> None:
    delivery = FakeDelivery(body=body, correlation_id="not-a-uuid")
    await _handle(rig, delivery)
    assert rig.capture.sent == []
    assert delivery.settled == ["reject"]


# --- faults become replies ------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (DirectoryUnavailable("(url ldap://dc1: cannot connect)"), Status.DIRECTORY_UNAVAILABLE),
        (DirectoryTimeout("(no answer within 5 s)"), Status.DIRECTORY_TIMEOUT),
        (RuntimeError("a bug in the agent"), Status.AGENT_ERROR),
    ],
)
async def test_directory_faults_become_macd_replies(
    agent_keys: Keys, error: Exception, status: Status
) -> None:
    rig = _rig(agent_keys, FakeDirectory(error=error))
    envelope, reply_key = _request(rig.keys)
    delivery = _delivery(envelope)
    await _handle(rig, delivery)
    [reply] = rig.capture.replies()
    assert reply.status is status
    assert verify_reply(reply, reply_key)
    assert delivery.settled == ["ack"]


async def test_unexpected_exception_in_the_handler_still_replies(rig: Rig, logs: Events) -> None:
    def broken(request_id: str, expires_at: float, now: float) -> Admission:
        raise KeyError("bug")

    rig.handler.replay.check_and_add = broken  # type: ignore[method-assign]
    envelope, _ = _request(rig.keys)
    delivery = _delivery(envelope)
    await _handle(rig, delivery)
    [reply] = rig.capture.replies()
    assert reply.status is Status.AGENT_ERROR and reply.mac == ""
    assert delivery.settled == ["ack"]
    assert _events(logs, "request_failed")


@dataclass
class SlowDirectory:
    """Never answers (until cancelled): the request's deadline must bound the wait."""

    calls: list[str] = field(default_factory=list)

    async def validate(
        self, username: str, password: str, *, deadline: float | None = None
    ) -> Verdict:
        self.calls.append(username)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        return None


async def test_the_deadline_bounds_a_hanging_directory(agent_keys: Keys) -> None:
    rig = _rig(agent_keys, SlowDirectory())
    envelope, reply_key = _request(rig.keys, expires_at=NOW + 0.2)
    async with asyncio.timeout(5):  # backstop: the handler must return by itself
        await _handle(rig, _delivery(envelope))
    [reply] = rig.capture.replies()
    assert reply.status is Status.DIRECTORY_TIMEOUT and verify_reply(reply, reply_key)


async def test_a_failed_publish_is_logged_and_the_message_still_acked(
    rig: Rig, logs: Events
) -> None:
    rig.capture.error = ConnectionError("channel closed")
    envelope, _ = _request(rig.keys)
    delivery = _delivery(envelope)
    await _handle(rig, delivery)
    assert delivery.settled == ["ack"]
    assert _events(logs, "reply_publish_failed")
    [summary] = _events(logs, "password_validated")
    assert summary["is_reply_sent"] is False


async def test_many_concurrent_requests_each_get_their_own_reply(rig: Rig) -> None:
    requests = [_request(rig.keys) for _ in range(40)]
    await asyncio.gather(*(_handle(rig, _delivery(env)) for env, _ in requests))
    keys = {env.request_id: key for env, key in requests}
    replies = rig.capture.replies()
    assert sorted(r.request_id for r in replies) == sorted(keys)
    assert all(verify_reply(r, keys[r.request_id]) for r in replies)


# --- the password never leaks ---------------------------------------------------------


async def test_the_password_never_appears_in_logs_or_replies(
    agent_keys: Keys, other_keys: Keys, logs: Events
) -> None:
    directories: list[Directory] = [
        FakeDirectory(users={USERNAME: (PASSWORD, Status.SUCCESS)}),
        FakeDirectory(error=DirectoryUnavailable("(down)")),
        FakeDirectory(error=RuntimeError("bug")),
    ]
    for directory in directories:
        rig = _rig(agent_keys, directory)
        for keys, password in ((agent_keys, PASSWORD), (other_keys, PASSWORD), (agent_keys, "x")):
            envelope, _ = _request(keys, password=password)
            await _handle(rig, _delivery(envelope))
            await _handle(rig, _delivery(envelope))  # replay
        envelope, _ = _request(agent_keys)
        rig.clock.now = NOW + 60
        await _handle(rig, _delivery(envelope))  # expired
        sent = b"".join(cast(aio_pika.Message, m).body for _, m in rig.capture.sent)
        assert PASSWORD.encode() not in sent
        assert base64.b64encode(PASSWORD.encode()) not in sent
    assert logs, "the flows above log"
    assert PASSWORD not in repr(logs)


async def test_the_trace_header_becomes_the_logged_correlation_id(rig: Rig, logs: Events) -> None:
    """One id, the STS's correlation id carried in a header, finds both sides' lines."""
    from common.wire import TRACE_HEADER

    envelope, _ = _request(rig.keys)
    trace = str(uuid.uuid4())
    await _handle(rig, _delivery(envelope, headers={TRACE_HEADER: trace}))
    [summary] = _events(logs, "password_validated")
    assert summary["correlation_id"] == trace
    assert summary["request_id"] == envelope.request_id


async def test_without_a_trace_header_the_request_id_is_the_correlation_id(
    rig: Rig, logs: Events
) -> None:
    envelope, _ = _request(rig.keys)
    await _handle(rig, _delivery(envelope))
    [summary] = _events(logs, "password_validated")
    assert summary["correlation_id"] == envelope.request_id
