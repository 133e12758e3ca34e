"""The daemon's logic with the CA and the broker replaced by fakes (agent.runner,
agent.heartbeat, agent.broker.broker_url). No network: the real broker and CA are in the
integration tests."""

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
from agent.broker import BrokerUnreachable, broker_url
from agent.cloud import AgentNotFound, BrokerGrant, CaClient, HeartbeatAnswer
from agent.heartbeat import Health, HeartbeatStatus, heartbeat_loop
from agent.https import Unreachable
from agent.settings import load_settings
from common.contracts import tenant_queue
from tests.unit.test_agent_state import Issued, issue, saved_registration


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


class FakeLink:
    def __init__(self, grant: BrokerGrant) -> None:
        self.grant = grant
        self.is_connected = True
        self.closed = False

    async def close(self, timeout_s: float) -> None:
        self.closed = True


class FakeCa:
    """Stands in for CaClient: bootstrap answers from a script, heartbeats recorded."""

    def __init__(self, grants: list[BrokerGrant | Exception], heartbeat: Any = None) -> None:
        self.grants = grants
        self.bootstraps = 0
        self.heartbeats: list[str] = []
        self.heartbeat_answer = heartbeat or HeartbeatAnswer(renew=False)
        self.heartbeat_seen = asyncio.Event()

    def __call__(self, *_: Any, **__: Any) -> FakeCa:
        return self

    async def __aenter__(self) -> FakeCa:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    async def bootstrap(self) -> BrokerGrant:
        self.bootstraps += 1
        item = self.grants.pop(0) if len(self.grants) > 1 else self.grants[0]
        if isinstance(item, Exception):
            raise item
        return item

    async def heartbeat(self, status: str, detail: str = "") -> HeartbeatAnswer:
        self.heartbeats.append(status)
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
def links(monkeypatch: pytest.MonkeyPatch) -> Links:
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
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, links: Links
) -> None:
    issued = issue()
    saved_registration(tmp_path, issued)
    ca = FakeCa([grant_for(issued)])
    monkeypatch.setattr(runner, "CaClient", ca)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(load_settings(state_dir=tmp_path), stop=stop))
    async with asyncio.timeout(5):
        await ca.heartbeat_seen.wait()
    stop.set()
    async with asyncio.timeout(5):
        await task  # returns: a requested stop is no error
    assert ca.heartbeats == ["healthy"]
    assert len(links) == 1 and links[0].closed


async def test_transient_bootstrap_failures_are_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, links: Links
) -> None:
    issued = issue()
    saved_registration(tmp_path, issued)
    ca = FakeCa([Unreachable("down"), BrokerUnreachable("x"), grant_for(issued)])
    monkeypatch.setattr(runner, "CaClient", ca)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(load_settings(state_dir=tmp_path), stop=stop))
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
        await asyncio.wait_for(
            runner.run(load_settings(state_dir=tmp_path), stop=asyncio.Event()), 5
        )
    assert links == []


async def test_agent_deleted_in_the_cloud_ends_the_run_with_that_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, links: Links
) -> None:
    issued = issue()
    saved_registration(tmp_path, issued)
    ca = FakeCa([grant_for(issued)], heartbeat=AgentNotFound(status=401))
    monkeypatch.setattr(runner, "CaClient", ca)
    with pytest.raises(AgentNotFound):
        await asyncio.wait_for(
            runner.run(load_settings(state_dir=tmp_path), stop=asyncio.Event()), 5
        )
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
    task = asyncio.create_task(runner.run(load_settings(state_dir=tmp_path), stop=stop))
    async with asyncio.timeout(5):
        await links.until(2)
    await asyncio.sleep(0)  # let the refresh task swap the link and close the old one
    stop.set()
    await asyncio.wait_for(task, 5)
    first, second = links
    assert first.closed and second.closed
    assert ca.bootstraps == 2
    assert second.grant.expires_at > first.grant.expires_at


async def test_run_without_registration_fails_clearly(tmp_path: Path) -> None:
    from agent.state import NotRegistered

    with pytest.raises(NotRegistered, match="pta-agent register"):
        await runner.run(load_settings(state_dir=tmp_path), stop=asyncio.Event())


def test_expired_grant_is_refused(tmp_path: Path) -> None:
    issued = issue()
    registration = saved_registration(tmp_path, issued)
    expired = grant_for(issued, expires_at=dt.datetime(2000, 1, 1, tzinfo=dt.UTC).timestamp())
    with pytest.raises(runner.GrantMismatch, match="clock"):
        runner._check_grant(expired, registration)
