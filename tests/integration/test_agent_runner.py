"""The agent daemon (agent.runner) against the test stack's real RabbitMQ and slapd.

First half: the CA is the in-process stand-in of test_agent_clients.py, over mutual TLS;
its bootstrap does what docs/design.md §3.2 says the CA does: create or rotate the agent's
broker user through the management API with a fresh access key and permissions that reach
only its tenant (configure ``^$``, write ``^pta\\.replies$``, read the tenant queue).

Second half ("the real cloud"): an agent registered through the stack's real STS and CA
in a throwaway tenant answers sealed sign-in requests (see the isolation note there).
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aio_pika.abc
import aiohttp
import asyncpg
import orjson
import pytest
import pytest_asyncio
import structlog
from argon2 import PasswordHasher
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from agent import __version__, registration, runner, state
from agent.broker import PlaintextBrokerRefused
from agent.cloud import CertificateRevoked
from agent.settings import load_settings
from agent.signin import PasswordLogin
from common import logs, pki
from common.contracts import ADMIN_ROLE, REPLY_EXCHANGE, tenant_queue, tenant_vhost
from common.envelope import kid_for, new_reply_key, seal, verify_reply
from common.wire import Reply, Status, decode_reply, request_message
from infra.stack import Stack
from tests.broker import (
    admin_url,
    drop_tenant,
    ensure_tenant,
    management_call,
    management_client,
    sts_url,
    sts_user,
)
from tests.logs import logged_event
from tests.support.fake_cloud import Agent, FakeCloud, registered

pytestmark = pytest.mark.stack


class Broker:
    """The stack's RabbitMQ as the CA sees it (``ca.broker_admin``, the CA's own code)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.users: list[str] = []
        self.tenants: list[str] = []

    async def grant(self, agent: Agent, *, lifetime_s: float) -> dict[str, Any]:
        """Create or rotate the agent's broker user (docs/design.md §3.2 step 3)."""
        user, key = f"agent-{agent.agent_id}", secrets.token_urlsafe(24)
        async with aiohttp.ClientSession() as session:
            await management_client(self.stack, session).put_agent_user(user, key, agent.tenant_id)
        self.users.append(user)
        return {
            "amqp_url": self.stack.rabbitmq.public_amqp_url,
            "vhost": tenant_vhost(agent.tenant_id),
            "username": user,
            "access_key": key,
            "queue": tenant_queue(agent.tenant_id),
            "reply_exchange": "pta.replies",
            "publisher": sts_user(self.stack),
            "expires_at": time.time() + lifetime_s,
            "agent_id": agent.agent_id,
            "tenant_id": agent.tenant_id,
            "heartbeat_interval_s": 600,
        }

    async def declare_tenant_queue(self, tenant_id: str) -> None:
        """The tenant's vhost, exchange and queue, as the CA makes them."""
        await ensure_tenant(self.stack, tenant_id)
        self.tenants.append(tenant_id)

    async def connections_of(self, user: str) -> list[dict[str, Any]]:
        _, connections = await management_call(self.stack, "GET", "/api/connections")
        return [c for c in connections if c.get("user") == user]

    async def cleanup(self) -> None:
        async with aiohttp.ClientSession() as session:
            admin = management_client(self.stack, session)
            for user in set(self.users):
                await admin.delete_user(user)
        for tenant_id in set(self.tenants):
            await drop_tenant(self.stack, tenant_id)


@pytest_asyncio.fixture
async def broker(stack: Stack) -> AsyncIterator[Broker]:
    b = Broker(stack)
    try:
        yield b
    finally:
        await b.cleanup()


@pytest.fixture
def log_output(caplog: pytest.LogCaptureFixture) -> Iterator[io.StringIO]:
    """Where ``_started`` sends the agent's structlog events (JSON lines, DEBUG); stdlib
    logs (aio-pika, aiohttp) go to caplog at DEBUG."""
    caplog.set_level(logging.DEBUG)
    yield io.StringIO()
    structlog.reset_defaults()


def events_in(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


def directory_overrides(stack: Stack, tenant_index: int = 0) -> dict[str, Any]:
    """Settings of the stack's directory for one demo tenant; no periodic sync (the
    tenants of these tests have no verified domain in the stack's cloud)."""
    tenant = stack.demo.tenants[tenant_index]
    return {
        "ldap_url": stack.ldap_url,
        "ldap_bind_dn": tenant.service_dn,
        "ldap_bind_password": tenant.service_password,
        "ldap_base_dn": tenant.people_dn,
        "ldap_domain": tenant.domain,
        "sync_interval_s": 0,
    }


async def _started(
    cloud: FakeCloud, tmp_path: Path, log_output: io.StringIO, stack: Stack, **settings: Any
) -> tuple[asyncio.Task[None], asyncio.Event, Agent]:
    loaded = await registered(cloud, tmp_path / "state")
    # The fake CA's bundle is pinned at registration; the stack's broker speaks AMQPS with
    # a certificate of the stack's service CA, so the pinned bundle holds both here.
    bundle = loaded.dir.ca_bundle
    bundle.write_bytes(bundle.read_bytes() + stack.pki.service_ca_cert.read_bytes())
    # As `pta-agent run` does; `register` (run by the CLI) configured logging for itself.
    logs.configure(level="DEBUG", json=True, service="agent")
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(file=log_output),
        cache_logger_on_first_use=False,  # module loggers must not stay on an old stream
    )
    stop = asyncio.Event()
    task = asyncio.create_task(
        runner.run(
            load_settings(state_dir=tmp_path / "state", **directory_overrides(stack), **settings),
            stop=stop,
        )
    )
    return task, stop, cloud.agents[loaded.record.agent_id]


async def test_run_connects_with_bootstrap_credentials_and_stops_on_request(
    cloud: FakeCloud, broker: Broker, tmp_path: Path, log_output: io.StringIO
) -> None:
    await broker.declare_tenant_queue(cloud.tenant_id)

    async def grant(agent: Agent) -> dict[str, Any]:
        return await broker.grant(agent, lifetime_s=3600)

    cloud.grant_factory = grant
    task, stop, agent = await _started(cloud, tmp_path, log_output, broker.stack)
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


async def test_a_plain_amqp_url_to_another_host_is_refused(
    cloud: FakeCloud, broker: Broker, tmp_path: Path, log_output: io.StringIO
) -> None:
    """Issue 8, finding 13: the CA's answer alone must not make the agent send its access
    key in the clear across a network; the operator's explicit setting is named."""
    await broker.declare_tenant_queue(cloud.tenant_id)

    async def grant(agent: Agent) -> dict[str, Any]:
        # 192.0.2.0/24 (TEST-NET-1, RFC 5737): never reached; the agent must not try.
        return {**await broker.grant(agent, lifetime_s=3600), "amqp_url": "amqp://192.0.2.7"}

    cloud.grant_factory = grant
    task, _stop, _agent = await _started(cloud, tmp_path, log_output, broker.stack)
    with pytest.raises(PlaintextBrokerRefused) as caught:
        await asyncio.wait_for(task, 15)
    assert "PTA_AGENT_ALLOW_PLAINTEXT_AMQP" in str(caught.value)
    assert "amqp://192.0.2.7" in str(caught.value)


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
    task, stop, agent = await _started(cloud, tmp_path, log_output, broker.stack)
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
    task, stop, agent = await _started(
        cloud, tmp_path, log_output, broker.stack, heartbeat_interval_s=0.2
    )
    async with asyncio.timeout(30):
        await rotated.wait()
        # The new link replaces the old one after the second bootstrap answered: wait for
        # that (on a busy machine heartbeats can come first), not for a fixed time.
        while "broker_credentials_rotated" not in log_output.getvalue():  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # a log stream has no event to await
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
    for key in keys:  # docs/design.md §7: no access key in any log
        assert key not in log_output.getvalue() and key not in caplog.text


async def test_agent_deleted_in_the_cloud_stops_the_run(
    cloud: FakeCloud, broker: Broker, tmp_path: Path, log_output: io.StringIO
) -> None:
    await broker.declare_tenant_queue(cloud.tenant_id)

    async def grant(agent: Agent) -> dict[str, Any]:
        return await broker.grant(agent, lifetime_s=3600)

    cloud.grant_factory = grant
    task, _stop, agent = await _started(
        cloud, tmp_path, log_output, broker.stack, heartbeat_interval_s=0.2
    )
    async with asyncio.timeout(30):
        await cloud.heartbeat_seen.wait()
    agent.deleted = True
    with pytest.raises(CertificateRevoked):
        await asyncio.wait_for(task, 15)


# --------------------------------------------------------------------------- the real cloud
#
# Isolation: the stack's own agents consume the contoso and fabrikam queues, so a request
# published there could be taken by any of them. These tests register a NEW agent, through
# the real STS (password grant of a tenant admin) and the real CA, in a throwaway tenant
# made for this module (tenant, verified domain and admin rows inserted here). The STS
# never dispatches to that tenant, its queue has no other consumer, and nothing of the
# demo tenants changes. At the end the agent is deleted through the CA (DELETE
# /agents/{id}: certificate revoked, broker user deleted), its queue is deleted and the
# tenant row goes (cascading to its domain, admin, users and sync runs). The agent
# validates against contoso's directory subtree: the directory settings are local to the
# agent, the tenant only decides which queue it consumes.


@dataclass(frozen=True, slots=True)
class Throwaway:
    tenant_id: str
    domain: str
    admin: PasswordLogin = field(repr=False)
    state_dir: Path
    registration: state.Registration


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def throwaway(stack: Stack) -> AsyncIterator[Throwaway]:
    tenant_id = str(uuid.uuid4())
    domain = f"t{uuid.uuid4().hex[:12]}.test"
    admin = PasswordLogin(username=f"admin@{domain}", password=secrets.token_urlsafe(18))
    state_dir = Path(tempfile.mkdtemp(prefix="pta-throwaway-")) / "agent"
    conn = await asyncpg.connect(stack.postgres_dsn)
    registration_: state.Registration | None = None
    try:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO tenants (id, name) VALUES ($1, $2)", uuid.UUID(tenant_id), domain
            )
            await conn.execute(
                "INSERT INTO domains (name, tenant_id, is_verified) VALUES ($1, $2, true)",
                domain,
                uuid.UUID(tenant_id),
            )
            await conn.execute(
                """INSERT INTO admins (id, tenant_id, username, password_hash, roles)
                   VALUES ($1, $2, $3, $4, $5)""",
                uuid.uuid4(),
                uuid.UUID(tenant_id),
                admin.username,
                PasswordHasher().hash(admin.password),
                [ADMIN_ROLE],
            )
        registration_ = await registration.register(
            state_dir=state_dir,
            ca_url=stack.services.ca_url,
            ca_bundle=stack.pki.service_ca_cert,
            tenant=tenant_id,
            host="pytest-throwaway",
            version=__version__,
            login=admin,
            force=False,
            timeout_s=30,
        )
        yield Throwaway(tenant_id, domain, admin, state_dir, registration_)
    finally:
        if registration_ is not None:
            await registration.unregister(
                state.load(state_dir), login=admin, timeout_s=30
            )  # DELETE /agents/{id}
        await drop_tenant(stack, tenant_id)
        await conn.execute("DELETE FROM tenants WHERE id = $1", uuid.UUID(tenant_id))
        await conn.close()
        shutil.rmtree(state_dir.parent, ignore_errors=True)


class Requester:
    """The STS side of docs/design.md §3.3, by hand: seal, publish, await the reply. The
    connection is the STS's broker user's on the tenant's vhost (``sts_url``)."""

    def __init__(
        self, connection: aio_pika.abc.AbstractConnection, target: Throwaway, publisher: str
    ):
        self.connection = connection
        self.target = target
        self.publisher = publisher
        cert = pki.load_certificates_pem(target.registration.dir.certificate.read_bytes())[0]
        public_key = cert.public_key()
        assert isinstance(public_key, RSAPublicKey)
        self.public_key = public_key
        self.kid = kid_for(public_key)
        assert self.kid == target.registration.kid

    async def ask(
        self, username: str, password: str, *, timeout_s: float = 15
    ) -> tuple[Reply, bytes, aio_pika.abc.AbstractIncomingMessage]:
        channel = await self.connection.channel()
        # Named as the STS's reply queues: the only ones its broker user may declare.
        replies = await channel.declare_queue(
            f"sts.pytest.{uuid.uuid4().hex[:12]}", exclusive=True, auto_delete=True
        )
        await replies.bind(REPLY_EXCHANGE, routing_key=replies.name)
        reply_key = new_reply_key()
        now = time.time()
        envelope = seal(
            password=password,
            reply_key=reply_key,
            recipients=[(self.kid, self.public_key)],
            request_id=str(uuid.uuid4()),
            tenant_id=self.target.tenant_id,
            username=username,
            issued_at=now,
            expires_at=now + 10,
        )
        message = request_message(
            envelope,
            reply_to=replies.name,
            correlation_id=envelope.request_id,
            expiration_s=10,
            publisher=self.publisher,
        )
        await channel.default_exchange.publish(
            message, routing_key=tenant_queue(self.target.tenant_id)
        )
        async with asyncio.timeout(timeout_s), replies.iterator() as stream:
            async for incoming in stream:
                await incoming.ack()
                reply = decode_reply(incoming.body)
                assert reply.request_id == envelope.request_id
                await channel.close()
                return reply, reply_key, incoming
        raise AssertionError("the reply queue closed")  # pragma: no cover


async def _consumers(stack: Stack, tenant_id: str) -> int:
    connection = await aio_pika.connect(admin_url(stack, tenant_id))
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(tenant_queue(tenant_id), passive=True)
        return int(queue.declaration_result.consumer_count or 0)


async def _until_consumed(stack: Stack, tenant_id: str, *, count: int = 1) -> None:
    async with asyncio.timeout(30):
        # The broker's consumer count is remote state without an event to await: poll it.
        while await _consumers(stack, tenant_id) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.1)


async def test_the_runner_answers_a_sealed_request_with_a_mac_valid_reply(
    stack: Stack, throwaway: Throwaway, log_output: io.StringIO, caplog: pytest.LogCaptureFixture
) -> None:
    contoso = stack.demo.tenants[0]
    alice = next(u for u in contoso.users if u.uid == "alice")
    logs.configure(level="DEBUG", json=True, service="agent")
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(file=log_output),
        cache_logger_on_first_use=False,
    )
    settings = load_settings(
        state_dir=throwaway.state_dir, heartbeat_interval_s=0.2, **directory_overrides(stack)
    )
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(settings, stop=stop))
    connection = await aio_pika.connect(sts_url(stack, throwaway.tenant_id))
    try:
        await _until_consumed(stack, throwaway.tenant_id)
        requester = Requester(connection, throwaway, sts_user(stack))
        # A wrong password first, then the right one: the success clears the failure
        # that the wrong bind counted against alice's lockout in the directory.
        wrong, wrong_key, _ = await requester.ask(alice.username, "wrong-" + alice.password)
        right, right_key, incoming = await requester.ask(alice.username, alice.password)
    finally:
        await connection.close()
    assert wrong.status is Status.INVALID_CREDENTIALS and verify_reply(wrong, wrong_key)
    assert right.status is Status.SUCCESS
    assert verify_reply(right, right_key)  # the MAC only the decrypting agent can make
    assert not verify_reply(right, wrong_key)
    assert right.agent_id == throwaway.registration.record.agent_id
    assert right.kid == throwaway.registration.kid
    assert incoming.correlation_id == right.request_id
    async with asyncio.timeout(30):
        # The heartbeat carries the handler's counts; the CA stores them (remote state).
        while "success=1" not in await _status_detail(stack, throwaway):  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    assert "invalid_credentials=1" in await _status_detail(stack, throwaway)
    stop.set()
    async with asyncio.timeout(30):
        await task
    # (Only the runner's own events: other modules' loggers may be cached on another
    # stream by earlier tests of the session.)
    names = [e["event"] for e in events_in(log_output)]
    assert names.index("consuming") < names.index("agent_stopping") < names.index("agent_stopped")
    text = log_output.getvalue() + caplog.text
    assert alice.password not in text and contoso.service_password not in text
    assert await _consumers(stack, throwaway.tenant_id) == 0


async def _status_detail(stack: Stack, target: Throwaway) -> str:
    conn = await asyncpg.connect(stack.postgres_dsn)
    try:
        value = await conn.fetchval(
            "SELECT status_detail FROM agents WHERE id = $1 AND tenant_id = $2",
            uuid.UUID(target.registration.record.agent_id),
            uuid.UUID(target.tenant_id),
        )
    finally:
        await conn.close()
    return str(value or "")


async def test_pta_agent_run_stops_cleanly_under_uvloop(stack: Stack, throwaway: Throwaway) -> None:
    """The real daemon (uvloop, TLS to the CA): SIGTERM while heartbeats are in flight
    ends it with exit 0 and no traceback (no TLS transport may outlive the loop)."""
    contoso = stack.demo.tenants[0]
    password_file = throwaway.state_dir.parent / "ldap-password"
    password_file.write_text(contoso.service_password + "\n")
    password_file.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PTA_AGENT_")}
    env.update(
        PTA_AGENT_STATE_DIR=str(throwaway.state_dir),
        PTA_AGENT_LDAP_URL=stack.ldap_url,
        PTA_AGENT_LDAP_BIND_DN=contoso.service_dn,
        PTA_AGENT_LDAP_BIND_PASSWORD_FILE=str(password_file),
        PTA_AGENT_LDAP_BASE_DN=contoso.people_dn,
        PTA_AGENT_LDAP_DOMAIN=contoso.domain,
        PTA_AGENT_SYNC_INTERVAL_S="0",
        PTA_AGENT_HEARTBEAT_INTERVAL_S="0.05",  # a heartbeat is in flight at most times
        PYTHONASYNCIODEBUG="0",
    )
    for _ in range(3):
        process = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("pta-agent")), "run",
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert process.stderr is not None
        seen: list[str] = []
        async with asyncio.timeout(30):
            while True:
                line = (await process.stderr.readline()).decode()
                assert line, "".join(seen)
                seen.append(line)
                if logged_event(line, "consuming"):
                    break
        await _until_consumed(stack, throwaway.tenant_id)
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            rest, _ = await asyncio.gather(process.stderr.read(), process.wait())
        output = "".join(seen) + rest.decode()
        assert process.returncode == 0, output
        assert logged_event(output, "agent_stopped")
        for bad in ("Traceback", "Fatal error", "Unclosed", "Task was destroyed", "ERROR"):
            assert bad not in output, output
        assert contoso.service_password not in output
