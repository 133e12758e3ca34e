"""The daemon's logic with the CA, the broker and the directory replaced by fakes
(agent.runner, agent.heartbeat, agent.broker.broker_url). No network: the real broker, CA
and directory are in the integration tests."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any, cast

import pytest
import structlog
from structlog.testing import capture_logs

from agent import runner
from agent.broker import (
    BrokerUnreachable,
    PlaintextBrokerRefused,
    broker_url,
    check_transport,
)
from agent.cloud import AgentNotFound, BrokerGrant, CaClient, HeartbeatAnswer
from agent.directory import DirectoryMisconfigured, DirectoryUnavailable, FakeDirectory
from agent.heartbeat import Health, HeartbeatStatus, heartbeat_loop
from agent.https import Unreachable
from agent.settings import Settings, load_settings
from common.contracts import tenant_queue
from tests.support.agent_state import Issued, issue, saved_registration


@pytest.fixture
def events() -> Iterator[list[MutableMapping[str, Any]]]:
    # Module loggers must not keep a logger cached under another test's configuration.
    structlog.configure(cache_logger_on_first_use=False)
    with capture_logs() as captured:
        yield captured
    structlog.reset_defaults()


def grant_for(issued: Issued, *, lifetime_s: float = 3600, **changes: Any) -> BrokerGrant:
    fields: dict[str, Any] = {
        "amqp_url": "amqp://127.0.0.1:5672",
        "vhost": "pta",
        "username": f"agent-{issued.agent_id}",
        "access_key": "k-marker",
        "queue": tenant_queue(issued.tenant_id),
        "reply_exchange": "pta.replies",
        "publisher": "pta-sts",
        "expires_at": time.time() + lifetime_s,
        "agent_id": issued.agent_id,
        "tenant_id": issued.tenant_id,
        "heartbeat_interval_s": 600,
    }
    fields.update(changes)
    return BrokerGrant.model_validate(fields)


# --------------------------------------------------------------------------- pure parts


def test_refresh_at_80_percent_of_the_lifetime() -> None:
    assert runner.refresh_delay(received_at=1000, expires_at=2000, now=1000) == 800
    assert runner.refresh_delay(received_at=1000, expires_at=2000, now=1700) == 100


def test_refresh_never_spins() -> None:
    delay = runner.refresh_delay(received_at=1000, expires_at=1001, now=5000)
    assert delay == runner.MIN_REFRESH_DELAY_S


def test_retry_backoff_doubles_with_jitter_up_to_a_cap() -> None:
    for attempt, ceiling in [(0, 1), (1, 2), (3, 8), (10, 60), (50, 60)]:
        delays = [runner.retry_delay(attempt) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)


def test_broker_url_carries_credentials_and_encoded_vhost() -> None:
    issued = issue()
    grant = grant_for(
        issued, amqp_url="amqps://broker.test:5671/ignored", vhost="a/b", access_key="p@ss:/w"
    )
    url = broker_url(grant)
    assert (url.scheme, url.host, url.port) == ("amqps", "broker.test", 5671)
    assert url.user == f"agent-{issued.agent_id}" and url.password == "p@ss:/w"
    assert url.raw_path == "/a%2Fb"


@pytest.mark.parametrize(
    ("amqp_url", "allow_plaintext", "is_refused"),
    [
        ("amqps://broker.example:5671", False, False),
        ("amqp://127.0.0.1:5672", False, False),
        ("amqp://127.9.9.9:5672", False, False),
        ("amqp://[::1]:5672", False, False),
        ("amqp://localhost:5672", False, False),
        ("amqp://broker.example:5672", False, True),
        ("amqp://10.0.0.7:5672", False, True),
        ("amqp://localhost.evil.example:5672", False, True),
        ("http://127.0.0.1:5672", False, True),
        ("amqp://broker.example:5672", True, False),
    ],
)
def test_plain_amqp_only_to_loopback_unless_allowed(
    amqp_url: str, allow_plaintext: bool, is_refused: bool
) -> None:
    grant = grant_for(issue(), amqp_url=amqp_url)
    if not is_refused:
        check_transport(grant, allow_plaintext=allow_plaintext)
        return
    with pytest.raises(PlaintextBrokerRefused) as caught:
        check_transport(grant, allow_plaintext=allow_plaintext)
    assert "PTA_AGENT_ALLOW_PLAINTEXT_AMQP" in str(caught.value)
    assert "k-marker" not in str(caught.value)


# --------------------------------------------------------------------------- heartbeat


class _Done(Exception):
    pass


class HeartbeatCa:
    def __init__(self, *answers: HeartbeatAnswer | Exception) -> None:
        self.answers = list(answers)
        self.sent: list[tuple[str, str]] = []

    async def heartbeat(self, status: str, detail: str = "") -> HeartbeatAnswer:
        self.sent.append((status, detail))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def _sleeps(limit: int) -> tuple[list[float], Any]:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) >= limit:
            raise _Done

    return slept, sleep


async def test_heartbeat_follows_the_cas_interval_and_logs_renewal_due(
    events: list[MutableMapping[str, Any]],
) -> None:
    ca = HeartbeatCa(
        HeartbeatAnswer(renew=False, heartbeat_interval_s=300),
        HeartbeatAnswer(renew=True),
    )
    slept, sleep = _sleeps(2)
    with pytest.raises(_Done):
        await heartbeat_loop(
            cast(CaClient, ca), health=lambda: Health(HeartbeatStatus.HEALTHY),
            interval_s=600, fixed_interval_s=None, sleep=sleep,
        )  # fmt: skip
    assert ca.sent == [("healthy", ""), ("healthy", "")]
    assert slept == [300, 300]
    assert [e["event"] for e in events if e["event"] == "renewal_due"] == ["renewal_due"]


async def test_operator_interval_wins() -> None:
    ca = HeartbeatCa(HeartbeatAnswer(renew=False, heartbeat_interval_s=300))
    slept, sleep = _sleeps(1)
    with pytest.raises(_Done):
        await heartbeat_loop(
            cast(CaClient, ca), health=lambda: Health(HeartbeatStatus.HEALTHY),
            interval_s=600, fixed_interval_s=42, sleep=sleep,
        )  # fmt: skip
    assert slept == [42]


async def test_heartbeat_survives_an_unreachable_ca(events: list[MutableMapping[str, Any]]) -> None:
    ca = HeartbeatCa(Unreachable("down"), HeartbeatAnswer(renew=False))
    _, sleep = _sleeps(2)
    health = Health(HeartbeatStatus.DEGRADED, "broker connection lost")
    with pytest.raises(_Done):
        await heartbeat_loop(
            cast(CaClient, ca), health=lambda: health, interval_s=60, fixed_interval_s=None,
            sleep=sleep,
        )  # fmt: skip
    assert ca.sent == [("degraded", "broker connection lost")] * 2
    assert any(e["event"] == "heartbeat_failed" for e in events)


async def test_heartbeat_stops_when_the_agent_is_gone() -> None:
    ca = HeartbeatCa(AgentNotFound(status=401))
    _, sleep = _sleeps(5)
    with pytest.raises(AgentNotFound):
        await heartbeat_loop(
            cast(CaClient, ca), health=lambda: Health(HeartbeatStatus.HEALTHY),
            interval_s=60, fixed_interval_s=None, sleep=sleep,
        )  # fmt: skip


# --------------------------------------------------------------------------- run()

# Directory settings that pass validation; the directory itself is a FakeDirectory.
DIRECTORY: dict[str, Any] = {
    "ldap_url": "ldap://127.0.0.1:1",
    "ldap_bind_dn": "cn=reader,dc=contoso,dc=test",
    "ldap_bind_password": "service-pw",
    "ldap_base_dn": "ou=people,dc=contoso,dc=test",
    "ldap_domain": "contoso.test",
    "sync_interval_s": 0,
}


def settings_for(state_dir: Path, **overrides: Any) -> Settings:
    return load_settings(state_dir=state_dir, **{**DIRECTORY, **overrides})


class FakeQueue:
    def __init__(self) -> None:
        self.consumers: dict[str, Any] = {}
        self.cancelled: list[str] = []

    async def consume(self, callback: Any, no_ack: bool = False) -> str:
        assert no_ack is False  # manual ack: the handler settles each message
        tag = f"ctag-{len(self.consumers) + 1}"
        self.consumers[tag] = callback
        return tag

    async def cancel(self, tag: str) -> None:
        self.cancelled.append(tag)


class FakeLink:
    def __init__(self, grant: BrokerGrant) -> None:
        self.grant = grant
        self.is_connected = True
        self.closed = False
        self.queue = FakeQueue()
        self.exchange = object()

    async def close(self, timeout_s: float) -> None:
        self.closed = True


@pytest.fixture
def directory(monkeypatch: pytest.MonkeyPatch) -> FakeDirectory:
    fake = FakeDirectory()

    async def open_directory(settings: Any) -> FakeDirectory:
        return fake

    monkeypatch.setattr(runner, "open_directory", open_directory)
    return fake


class FakeCa:
    """Stands in for CaClient: bootstrap answers from a script, heartbeats recorded."""

    def __init__(self, grants: list[BrokerGrant | Exception], heartbeat: Any = None) -> None:
        self.grants = grants
        self.bootstraps = 0
        self.heartbeats: list[str] = []
        self.heartbeat_answer = heartbeat or HeartbeatAnswer(renew=False)
        self.heartbeat_seen = asyncio.Event()
        self.details: list[str] = []
        self.closed = False

    def __call__(self, *_: Any, **__: Any) -> FakeCa:
        return self

    async def __aenter__(self) -> FakeCa:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    async def close(self) -> None:
        self.closed = True

    async def bootstrap(self) -> BrokerGrant:
        self.bootstraps += 1
        item = self.grants.pop(0) if len(self.grants) > 1 else self.grants[0]
        if isinstance(item, Exception):
            raise item
        return item

    async def heartbeat(self, status: str, detail: str = "") -> HeartbeatAnswer:
        self.heartbeats.append(status)
        self.details.append(detail)
        self.heartbeat_seen.set()
        if isinstance(self.heartbeat_answer, Exception):
            raise self.heartbeat_answer
        return cast(HeartbeatAnswer, self.heartbeat_answer)


class Links(list[FakeLink]):
    """The links the runner opened, with a way to await the next one."""

    def __init__(self) -> None:
        super().__init__()
        self.opened = asyncio.Event()

    async def until(self, count: int) -> None:
        while len(self) < count:
            self.opened.clear()
            await self.opened.wait()


@pytest.fixture
def links(monkeypatch: pytest.MonkeyPatch, directory: FakeDirectory) -> Links:
    opened = Links()

    async def open_link(grant: BrokerGrant, **_: Any) -> FakeLink:
        link = FakeLink(grant)
        opened.append(link)
        opened.opened.set()
        return link

    monkeypatch.setattr(runner, "open_link", open_link)
    monkeypatch.setattr(runner, "retry_delay", lambda attempt: 0.0)
    return opened


async def test_run_connects_heartbeats_and_stops_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, links: Links, directory: FakeDirectory
) -> None:
    issued = issue()
    saved_registration(tmp_path, issued)
    ca = FakeCa([grant_for(issued)])
    monkeypatch.setattr(runner, "CaClient", ca)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(settings_for(tmp_path), stop=stop))
    async with asyncio.timeout(5):
        await ca.heartbeat_seen.wait()
    (link,) = links
    (tag,) = link.queue.consumers  # consuming (manual ack) before the first heartbeat
    assert not directory.is_closed
    stop.set()
    async with asyncio.timeout(5):
        await task  # returns: a requested stop is no error
    assert ca.heartbeats == ["healthy"]
    assert ca.details == ["replies none"]
    assert link.queue.cancelled == [tag] and link.closed and ca.closed
    assert directory.is_closed  # closed last


class HeldMessage:
    """An incoming message whose handling waits until the test releases it."""

    def __init__(self) -> None:
        self.body = b"not json"  # the handler answers nothing and rejects it
        self.reply_to = None
        self.correlation_id = None
        self.message_id = None
        self.redelivered = False
        self.user_id = "pta-sts"  # the grant's publisher
        self.processed = False
        self.settled: list[str] = []

    async def reject(self, requeue: bool = False) -> None:
        self.settled.append("reject")
        self.processed = True

    async def ack(self) -> None:
        self.settled.append("ack")
        self.processed = True


async def test_stop_drains_in_flight_requests_before_closing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, links: Links, directory: FakeDirectory
) -> None:
    issued = issue()
    saved_registration(tmp_path, issued)
    ca = FakeCa([grant_for(issued)])
    monkeypatch.setattr(runner, "CaClient", ca)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(settings_for(tmp_path), stop=stop))
    async with asyncio.timeout(5):
        await ca.heartbeat_seen.wait()
    (link,) = links
    (consumer,) = link.queue.consumers.values()
    release = asyncio.Event()
    real_handler = consumer.handler

    async def slow_handler(message: Any) -> None:
        await release.wait()
        await real_handler(message)

    consumer.handler = slow_handler
    message = HeldMessage()
    in_flight = asyncio.create_task(consumer(message))
    await asyncio.sleep(0)  # let the delivery start, as aio-pika's task would
    stop.set()
    await asyncio.sleep(0.05)  # the runner is draining now: nothing may be closed yet
    assert not task.done() and not link.closed and not directory.is_closed
    release.set()
    async with asyncio.timeout(5):
        await task
        await in_flight
    assert message.settled == ["reject"] and link.closed and directory.is_closed


async def test_drain_gives_up_after_drain_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, links: Links, directory: FakeDirectory
) -> None:
    issued = issue()
    saved_registration(tmp_path, issued)
    ca = FakeCa([grant_for(issued)])
    monkeypatch.setattr(runner, "CaClient", ca)
    stop = asyncio.Event()
    settings = settings_for(tmp_path, drain_timeout_s=0.1)
    task = asyncio.create_task(runner.run(settings, stop=stop))
    async with asyncio.timeout(5):
        await ca.heartbeat_seen.wait()
    (consumer,) = links[0].queue.consumers.values()
    never = asyncio.Event()

    async def stuck(message: Any) -> None:
        await never.wait()

    consumer.handler = stuck
    in_flight = asyncio.create_task(consumer(HeldMessage()))
    await asyncio.sleep(0)
    stop.set()
    async with asyncio.timeout(5):
        await task  # does not wait for the stuck request beyond drain_timeout_s
    assert links[0].closed and directory.is_closed
    in_flight.cancel()


async def test_heartbeat_detail_carries_the_handlers_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, links: Links
) -> None:
    issued = issue()
    saved_registration(tmp_path, issued)
    ca = FakeCa([grant_for(issued)])
    monkeypatch.setattr(runner, "CaClient", ca)
    stop = asyncio.Event()
    task = asyncio.create_task(
        runner.run(settings_for(tmp_path, heartbeat_interval_s=0.05), stop=stop)
    )
    async with asyncio.timeout(5):
        await ca.heartbeat_seen.wait()
    (consumer,) = links[0].queue.consumers.values()
    await consumer(HeldMessage())  # undecodable: counted, rejected
    ca.heartbeat_seen.clear()
    async with asyncio.timeout(5):
        await ca.heartbeat_seen.wait()
    stop.set()
    await asyncio.wait_for(task, 5)
    assert "undecodable=1" in ca.details[-1]
    assert len(ca.details[-1]) <= 256


async def test_unreachable_directory_is_retried_then_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, links: Links
) -> None:
    issued = issue()
    saved_registration(tmp_path, issued)
    ca = FakeCa([grant_for(issued)])
    monkeypatch.setattr(runner, "CaClient", ca)
    attempts = 0
    fake = FakeDirectory()

    async def open_directory(settings: Any) -> FakeDirectory:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise DirectoryUnavailable("(url ldap://127.0.0.1:1: cannot connect)")
        return fake

    monkeypatch.setattr(runner, "open_directory", open_directory)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(settings_for(tmp_path), stop=stop))
    async with asyncio.timeout(5):
        await ca.heartbeat_seen.wait()
    stop.set()
    await asyncio.wait_for(task, 5)
    assert attempts == 3 and fake.is_closed


async def test_misconfigured_directory_is_fatal_before_any_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, links: Links
) -> None:
    issued = issue()
    saved_registration(tmp_path, issued)
    ca = FakeCa([grant_for(issued)])
    monkeypatch.setattr(runner, "CaClient", ca)

    async def open_directory(settings: Any) -> FakeDirectory:
        raise DirectoryMisconfigured("base_dn: 'ou=nope' does not exist.")

    monkeypatch.setattr(runner, "open_directory", open_directory)
    with pytest.raises(DirectoryMisconfigured, match="base_dn"):
        await asyncio.wait_for(runner.run(settings_for(tmp_path), stop=asyncio.Event()), 5)
    assert ca.bootstraps == 0 and links == []


async def test_stop_while_waiting_for_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, links: Links
) -> None:
    issued = issue()
    saved_registration(tmp_path, issued)
    monkeypatch.setattr(runner, "retry_delay", lambda attempt: 60.0)

    async def open_directory(settings: Any) -> FakeDirectory:
        raise DirectoryUnavailable("(down)")

    monkeypatch.setattr(runner, "open_directory", open_directory)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(settings_for(tmp_path), stop=stop))
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 5)  # no 60 s wait, no error
    assert links == []


def test_bad_directory_settings_fail_before_anything(tmp_path: Path) -> None:
    saved_registration(tmp_path, issue())
    from agent.settings import SettingsInvalid

    settings = settings_for(tmp_path, ldap_url=None)
    with pytest.raises(SettingsInvalid, match="PTA_AGENT_LDAP_URL"):
        asyncio.run(runner.run(settings, stop=asyncio.Event()))


async def test_transient_bootstrap_failures_are_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, links: Links
) -> None:
    issued = issue()
    saved_registration(tmp_path, issued)
    ca = FakeCa([Unreachable("down"), BrokerUnreachable("x"), grant_for(issued)])
    monkeypatch.setattr(runner, "CaClient", ca)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(settings_for(tmp_path), stop=stop))
    async with asyncio.timeout(5):
        await ca.heartbeat_seen.wait()
    stop.set()
    await asyncio.wait_for(task, 5)
    assert ca.bootstraps == 3


async def test_bootstrap_for_another_tenant_is_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, links: Links
) -> None:
    issued = issue()
    saved_registration(tmp_path, issued)
    other = issue()
    ca = FakeCa([grant_for(issued, tenant_id=other.tenant_id, queue=tenant_queue(other.tenant_id))])
    monkeypatch.setattr(runner, "CaClient", ca)
    with pytest.raises(runner.GrantMismatch):
        await asyncio.wait_for(runner.run(settings_for(tmp_path), stop=asyncio.Event()), 5)
    assert links == []


async def test_agent_deleted_in_the_cloud_ends_the_run_with_that_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, links: Links
) -> None:
    issued = issue()
    saved_registration(tmp_path, issued)
    ca = FakeCa([grant_for(issued)], heartbeat=AgentNotFound(status=401))
    monkeypatch.setattr(runner, "CaClient", ca)
    with pytest.raises(AgentNotFound):
        await asyncio.wait_for(runner.run(settings_for(tmp_path), stop=asyncio.Event()), 5)
    assert links[0].closed


async def test_credentials_are_refreshed_before_they_expire(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, links: Links
) -> None:
    issued = issue()
    saved_registration(tmp_path, issued)
    monkeypatch.setattr(runner, "MIN_REFRESH_DELAY_S", 0.0)
    ca = FakeCa([grant_for(issued, lifetime_s=0.5), grant_for(issued, lifetime_s=3600)])
    monkeypatch.setattr(runner, "CaClient", ca)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(settings_for(tmp_path), stop=stop))
    async with asyncio.timeout(5):
        await links.until(2)
    first, second = links
    async with asyncio.timeout(5):
        # The refresh swaps the link, then closes the old one; the fake has no event.
        while not first.closed:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    # The same handler (and so the same replay cache) moved to the new link.
    (old_tag, old_consumer), (_, new_consumer) = (
        *first.queue.consumers.items(),
        *second.queue.consumers.items(),
    )
    assert first.queue.cancelled == [old_tag]
    assert new_consumer.handler is old_consumer.handler
    assert new_consumer.handler.exchange is second.exchange
    stop.set()
    await asyncio.wait_for(task, 5)
    assert first.closed and second.closed
    assert ca.bootstraps == 2
    assert second.grant.expires_at > first.grant.expires_at


async def test_run_without_registration_fails_clearly(tmp_path: Path) -> None:
    from agent.state import NotRegistered

    with pytest.raises(NotRegistered, match="pta-agent register"):
        await runner.run(settings_for(tmp_path), stop=asyncio.Event())


def test_expired_grant_is_refused(tmp_path: Path) -> None:
    issued = issue()
    registration = saved_registration(tmp_path, issued)
    expired = grant_for(issued, expires_at=dt.datetime(2000, 1, 1, tzinfo=dt.UTC).timestamp())
    with pytest.raises(runner.GrantMismatch, match="clock"):
        runner._check_grant(expired, registration)
