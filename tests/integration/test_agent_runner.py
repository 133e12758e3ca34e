"""The agent daemon (agent.runner) against the test stack's real RabbitMQ.

The CA is the in-process stand-in of test_agent_clients.py, over mutual TLS; its
bootstrap does what DESIGN.md flow 2 says the CA does: create or rotate the agent's
broker user through the management API with a fresh access key and permissions that reach
only its tenant (configure ``^$``, write ``^pta\\.replies$``, read the tenant queue).
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aio_pika
import aiohttp
import orjson
import pytest
import pytest_asyncio
import structlog

from agent import runner
from agent.cloud import CertificateRevoked
from agent.settings import load_settings
from common import logs
from common.contracts import TENANT_QUEUE_ARGUMENTS, TENANT_QUEUE_DURABLE, tenant_queue
from infra.rabbitmq import VHOST
from infra.stack import Stack
from tests.integration.test_agent_clients import (
    Agent,
    FakeCloud,
    Material,
    make_material,
    registered,
)

pytestmark = pytest.mark.stack


class Broker:
    """The stack's RabbitMQ as the CA sees it: management API and an admin connection."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.management = stack.rabbitmq.management_url
        raw = f"{stack.demo.rabbitmq_admin_user}:{stack.demo.rabbitmq_admin_password}"
        self.auth = {"Authorization": "Basic " + base64.b64encode(raw.encode()).decode()}
        self.users: list[str] = []
        self.queues: list[str] = []

    async def grant(self, agent: Agent, *, lifetime_s: float) -> dict[str, Any]:
        """Create or rotate the agent's broker user (DESIGN.md flow 2 step 3)."""
        user, key = f"agent-{agent.agent_id}", secrets.token_urlsafe(24)
        async with aiohttp.ClientSession(headers=self.auth) as http:
            r = await http.put(
                f"{self.management}/api/users/{user}", json={"password": key, "tags": ""}
            )
            assert r.status in (201, 204), await r.text()
            r = await http.put(
                f"{self.management}/api/permissions/{VHOST}/{user}",
                json={
                    "configure": "^$",
                    "write": r"^pta\.replies$",
                    "read": f"^{re.escape(tenant_queue(agent.tenant_id))}$",
                },
            )
            assert r.status in (201, 204), await r.text()
        self.users.append(user)
        return {
            "amqp_url": f"amqp://127.0.0.1:{self.stack.layout.ports.amqp}",
            "vhost": VHOST,
            "username": user,
            "access_key": key,
            "queue": tenant_queue(agent.tenant_id),
            "reply_exchange": "pta.replies",
            "expires_at": time.time() + lifetime_s,
            "agent_id": agent.agent_id,
            "tenant_id": agent.tenant_id,
            "heartbeat_interval_s": 600,
        }

    async def declare_tenant_queue(self, tenant_id: str) -> None:
        connection = await aio_pika.connect(self.stack.amqp_url)
        async with connection:
            channel = await connection.channel()
            await channel.declare_queue(
                tenant_queue(tenant_id),
                durable=TENANT_QUEUE_DURABLE,
                arguments=dict(TENANT_QUEUE_ARGUMENTS),
            )
        self.queues.append(tenant_queue(tenant_id))

    async def connections_of(self, user: str) -> list[dict[str, Any]]:
        async with aiohttp.ClientSession(headers=self.auth) as http:
            r = await http.get(f"{self.management}/api/connections")
            connections: list[dict[str, Any]] = await r.json()
        return [c for c in connections if c.get("user") == user]

    async def cleanup(self) -> None:
        async with aiohttp.ClientSession(headers=self.auth) as http:
            for user in set(self.users):
                await http.delete(f"{self.management}/api/users/{user}")
            for queue in set(self.queues):
                await http.delete(f"{self.management}/api/queues/{VHOST}/{quote(queue, safe='')}")


@pytest_asyncio.fixture
async def broker(stack: Stack) -> AsyncIterator[Broker]:
    b = Broker(stack)
    try:
        yield b
    finally:
        await b.cleanup()


@pytest.fixture
def material(tmp_path: Path) -> Material:
    directory = tmp_path / "pki"
    directory.mkdir()
    return make_material(directory)


@pytest_asyncio.fixture
async def cloud(material: Material) -> AsyncIterator[FakeCloud]:
    fake = FakeCloud(material)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
def log_output(caplog: pytest.LogCaptureFixture) -> Iterator[io.StringIO]:
    """Where ``_started`` sends the agent's structlog events (JSON lines, DEBUG); stdlib
    logs (aio-pika, aiohttp) go to caplog at DEBUG."""
    caplog.set_level(logging.DEBUG)
    yield io.StringIO()
    structlog.reset_defaults()


def events_in(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


async def _started(
    cloud: FakeCloud, tmp_path: Path, log_output: io.StringIO, **settings: Any
) -> tuple[asyncio.Task[None], asyncio.Event, Agent]:
    loaded = await registered(cloud, tmp_path / "state")
    # As `pta-agent run` does; `register` (run by the CLI) configured logging for itself.
    logs.configure(level="DEBUG", json=True, service="agent")
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(file=log_output),
        cache_logger_on_first_use=False,  # module loggers must not stay on an old stream
    )
    stop = asyncio.Event()
    task = asyncio.create_task(
        runner.run(load_settings(state_dir=tmp_path / "state", **settings), stop=stop)
    )
    return task, stop, cloud.agents[loaded.record.agent_id]


async def test_run_connects_with_bootstrap_credentials_and_stops_on_request(
    cloud: FakeCloud, broker: Broker, tmp_path: Path, log_output: io.StringIO
) -> None:
    await broker.declare_tenant_queue(cloud.tenant_id)

    async def grant(agent: Agent) -> dict[str, Any]:
        return await broker.grant(agent, lifetime_s=3600)

    cloud.grant_factory = grant
    task, stop, agent = await _started(cloud, tmp_path, log_output)
    async with asyncio.timeout(30):
        await cloud.heartbeat_seen.wait()
    assert agent.heartbeats[0]["status"] == "healthy"
    user = f"agent-{agent.agent_id}"
    async with asyncio.timeout(30):
        # The management API has no event to await; it lists a new connection within
        # moments, so poll it.
        while not await broker.connections_of(user):  # noqa: ASYNC110 - a remote API
            await asyncio.sleep(0.2)
    (connection,) = await broker.connections_of(user)
    assert connection["client_properties"]["connection_name"] == f"pta-agent {agent.agent_id}"
    stop.set()
    async with asyncio.timeout(15):
        await task  # a requested stop ends run() without an error


async def test_missing_queue_is_retried_until_the_cloud_declares_it(
    cloud: FakeCloud,
    broker: Broker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    log_output: io.StringIO,
) -> None:
    monkeypatch.setattr(runner, "retry_delay", lambda attempt: 0.05)
    bootstraps = 0

    async def grant(agent: Agent) -> dict[str, Any]:
        nonlocal bootstraps
        bootstraps += 1
        if bootstraps == 3:  # the passive declare failed twice: the queue appears now
            await broker.declare_tenant_queue(agent.tenant_id)
        return await broker.grant(agent, lifetime_s=3600)

    cloud.grant_factory = grant
    task, stop, agent = await _started(cloud, tmp_path, log_output)
    async with asyncio.timeout(30):
        await cloud.heartbeat_seen.wait()
    assert bootstraps == 3 and agent.heartbeats[0]["status"] == "healthy"
    stop.set()
    await asyncio.wait_for(task, 15)


async def test_credentials_are_rotated_and_the_link_replaced(
    cloud: FakeCloud,
    broker: Broker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    log_output: io.StringIO,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await broker.declare_tenant_queue(cloud.tenant_id)
    monkeypatch.setattr(runner, "MIN_REFRESH_DELAY_S", 0.0)
    rotated = asyncio.Event()
    bootstraps = 0
    keys: list[str] = []

    async def grant(agent: Agent) -> dict[str, Any]:
        nonlocal bootstraps
        bootstraps += 1
        if bootstraps == 2:
            rotated.set()
        # The first key is short-lived, so the runner bootstraps again after ~1.6 s.
        answer = await broker.grant(agent, lifetime_s=2 if bootstraps == 1 else 3600)
        keys.append(answer["access_key"])
        return answer

    cloud.grant_factory = grant
    task, stop, agent = await _started(cloud, tmp_path, log_output, heartbeat_interval_s=0.2)
    async with asyncio.timeout(30):
        await rotated.wait()
    before = len(agent.heartbeats)
    cloud.heartbeat_seen.clear()
    async with asyncio.timeout(30):
        while len(agent.heartbeats) <= before + 1:
            await cloud.heartbeat_seen.wait()
            cloud.heartbeat_seen.clear()
    assert agent.heartbeats[-1]["status"] == "healthy"  # the new link is up
    assert not task.done()
    stop.set()
    await asyncio.wait_for(task, 15)
    assert bootstraps == 2
    names = [e["event"] for e in events_in(log_output)]
    for event in ("agent_starting", "agent_bootstrapped", "broker_connected",
                  "broker_credentials_rotated", "agent_stopping", "agent_stopped"):  # fmt: skip
        assert event in names
    assert names.count("agent_bootstrapped") == 2
    for key in keys:  # DESIGN.md security rules: no access key in any log
        assert key not in log_output.getvalue() and key not in caplog.text


async def test_agent_deleted_in_the_cloud_stops_the_run(
    cloud: FakeCloud, broker: Broker, tmp_path: Path, log_output: io.StringIO
) -> None:
    await broker.declare_tenant_queue(cloud.tenant_id)

    async def grant(agent: Agent) -> dict[str, Any]:
        return await broker.grant(agent, lifetime_s=3600)

    cloud.grant_factory = grant
    task, _stop, agent = await _started(cloud, tmp_path, log_output, heartbeat_interval_s=0.2)
    async with asyncio.timeout(30):
        await cloud.heartbeat_seen.wait()
    agent.deleted = True
    with pytest.raises(CertificateRevoked):
        await asyncio.wait_for(task, 15)
