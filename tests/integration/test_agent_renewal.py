"""Certificate renewal by the real agent daemon against the stack's real CA, PostgreSQL,
RabbitMQ and slapd (agent.renewal, agent.runner, ca.renewal).

Agents are registered through the stack's real STS and CA in a throwaway tenant (as in
test_agent_runner.py) and run in-process (``runner.run``) with a fast heartbeat. The
stack's CA says ``renew: true`` from the agent row's ``cert_not_after``, so a test makes
an agent due by moving that date in the database (no clock moves, no sleeps of days).
Sign-ins are sealed as the STS seals them, for the keys the STS's own per-tenant key
cache (``sts.agent_keys.AgentKeys``, refreshed by the Postgres notification) holds.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import secrets
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aio_pika.abc
import aiohttp
import asyncpg
import pytest
import pytest_asyncio
import structlog
from argon2 import PasswordHasher

from agent import __version__, registration, renewal, runner, state
from agent.settings import load_settings
from agent.signin import PasswordLogin
from common import logs
from common.contracts import ADMIN_ROLE, REPLY_EXCHANGE, tenant_queue
from common.envelope import new_reply_key, seal
from common.tls import client_context
from common.wire import Status, decode_reply, request_message
from infra.stack import Stack
from sts.agent_keys import AgentKeys
from sts.dispatcher import ReplyCheck, check_reply
from sts.queries import Database
from tests.broker import admin_url, sts_url, sts_user
from tests.integration.test_agent_runner import Broker, directory_overrides

pytestmark = pytest.mark.stack


@dataclass
class Tenant:
    tenant_id: str
    admin: PasswordLogin = field(repr=False)
    folder: Path
    state_dirs: list[Path] = field(default_factory=list)


@pytest_asyncio.fixture(loop_scope="session")
async def tenant(stack: Stack) -> AsyncIterator[Tenant]:
    tenant_id = str(uuid.uuid4())
    domain = f"r{uuid.uuid4().hex[:12]}.test"
    admin = PasswordLogin(username=f"admin@{domain}", password=secrets.token_urlsafe(18))
    folder = Path(tempfile.mkdtemp(prefix="pta-renewal-"))
    conn = await asyncpg.connect(stack.postgres_dsn)
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
        yield Tenant(tenant_id, admin, folder)
    finally:
        cleanup = Broker(stack)
        cleanup.tenants.append(tenant_id)
        await cleanup.cleanup()
        for row in await conn.fetch(
            "SELECT id::text FROM agents WHERE tenant_id = $1", uuid.UUID(tenant_id)
        ):
            await cleanup_user(stack, f"pta-agent-{row[0]}")
        await conn.execute("DELETE FROM tenants WHERE id = $1", uuid.UUID(tenant_id))
        await conn.close()
        shutil.rmtree(folder, ignore_errors=True)


async def cleanup_user(stack: Stack, name: str) -> None:
    raw = f"{stack.demo.rabbitmq_admin_user}:{stack.demo.rabbitmq_admin_password}"
    auth = {"Authorization": "Basic " + base64.b64encode(raw.encode()).decode()}
    async with (
        aiohttp.ClientSession(headers=auth) as http,
        http.delete(f"{stack.rabbitmq.management_url}/api/users/{name}"),
    ):
        pass


async def _register(stack: Stack, tenant: Tenant, name: str) -> state.Registration:
    state_dir = tenant.folder / name
    loaded = await registration.register(
        state_dir=state_dir,
        ca_url=stack.services.ca_url,
        ca_bundle=stack.pki.service_ca_cert,
        tenant=tenant.tenant_id,
        host=f"pytest-{name}",
        version=__version__,
        login=tenant.admin,
        force=False,
        timeout_s=30,
    )
    tenant.state_dirs.append(state_dir)
    return loaded


def _logs_to(sink: io.StringIO) -> None:
    """As `pta-agent run` configures logging, to ``sink``; loggers must not be cached, or
    later tests of the session could not capture the agent modules' events."""
    logs.configure(level="DEBUG", json=True, service="agent")
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(file=sink), cache_logger_on_first_use=False
    )


class Agents:
    """Daemons of one tenant running in this event loop."""

    output = io.StringIO()

    def __init__(self, stack: Stack, tenant: Tenant) -> None:
        self.stack, self.tenant = stack, tenant
        self.stop = asyncio.Event()
        _logs_to(self.output)
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, state_dir: Path) -> None:
        settings = load_settings(
            state_dir=state_dir, heartbeat_interval_s=0.3, **directory_overrides(self.stack)
        )
        self.tasks.append(asyncio.create_task(runner.run(settings, stop=self.stop)))

    async def close(self) -> None:
        self.stop.set()
        async with asyncio.timeout(60):
            results = await asyncio.gather(*self.tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result


@pytest_asyncio.fixture(loop_scope="session")
async def keys(stack: Stack) -> AsyncIterator[AgentKeys]:
    """The STS's key cache, listening for the agents trigger's notifications."""
    pool = await asyncpg.create_pool(stack.postgres_dsn, min_size=1, max_size=4)
    cache = AgentKeys(Database(pool, timeout_s=10), dsn=stack.postgres_dsn, connect_timeout_s=10)
    listener = asyncio.create_task(cache.listen())
    try:
        async with asyncio.timeout(10):
            await cache.listening.wait()
        yield cache
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        await pool.close()


class SignIns:
    """Sign-ins sealed as the STS seals them: for every key of the tenant in the cache."""

    def __init__(
        self,
        connection: aio_pika.abc.AbstractConnection,
        keys: AgentKeys,
        tenant_id: str,
        publisher: str,
    ):
        """``connection`` is the STS's broker user's on the tenant's vhost (``sts_url``),
        ``publisher`` that user's name: agents handle only what it publishes."""
        self.connection, self.keys, self.tenant_id = connection, keys, tenant_id
        self.publisher = publisher
        self.results: list[tuple[str, str]] = []  # (outcome, kid sealed for ...)
        self.recipients: dict[str, dict[str, str]] = {}  # request id -> agent id -> kid

    async def seal(self, username: str, password: str, *, lifetime_s: float = 10) -> Any:
        """An envelope for the tenant's keys as the cache has them now, and its reply key."""
        agents = await self.keys.for_tenant(self.tenant_id)
        reply_key = new_reply_key()
        now = time.time()
        envelope = seal(
            password=password,
            reply_key=reply_key,
            recipients=[(a.kid, a.public_key) for a in agents],
            request_id=str(uuid.uuid4()),
            tenant_id=self.tenant_id,
            username=username,
            issued_at=now,
            expires_at=now + lifetime_s,
        )
        self.recipients[envelope.request_id] = {a.id: a.kid for a in agents}
        return envelope, reply_key

    async def one(self, channel: aio_pika.abc.AbstractChannel, username: str, password: str) -> str:
        return await self.send(channel, *await self.seal(username, password))

    async def send(
        self, channel: aio_pika.abc.AbstractChannel, envelope: Any, reply_key: bytes
    ) -> str:
        # Named as the STS's reply queues: the only ones its broker user may declare.
        replies = await channel.declare_queue(
            f"sts.pytest.{uuid.uuid4().hex[:12]}", exclusive=True, auto_delete=True
        )
        await replies.bind(REPLY_EXCHANGE, routing_key=replies.name)
        remaining_s = envelope.expires_at - time.time()
        message = request_message(
            envelope, reply_to=replies.name, correlation_id=envelope.request_id,
            expiration_s=remaining_s, publisher=self.publisher,
        )  # fmt: skip
        await channel.default_exchange.publish(message, routing_key=tenant_queue(self.tenant_id))
        try:
            async with asyncio.timeout(remaining_s), replies.iterator() as stream:
                async for incoming in stream:
                    await incoming.ack()
                    reply = decode_reply(incoming.body)
                    # The STS's own check: MAC, and a kid the envelope was sealed for.
                    sealed_for = self.recipients.pop(envelope.request_id, {})
                    check = check_reply(reply, reply_key=reply_key, recipients=sealed_for)
                    ok = reply.status is Status.SUCCESS and check is ReplyCheck.ACCEPTED
                    return "success" if ok else f"failed:{reply.status}:{reply.detail}"
        except TimeoutError:
            return "failed:timeout"
        finally:
            await replies.delete(if_unused=False, if_empty=False)
        return "failed:closed"

    async def load(self, stop: asyncio.Event, username: str, password: str, workers: int) -> None:
        async def worker() -> None:
            channel = await self.connection.channel()
            try:
                while not stop.is_set():
                    self.results.append((await self.one(channel, username, password), ""))
            finally:
                await channel.close()

        await asyncio.gather(*(worker() for _ in range(workers)))

    @property
    def failures(self) -> list[str]:
        return [outcome for outcome, _ in self.results if outcome != "success"]


async def _consumers(stack: Stack, tenant_id: str) -> int:
    connection = await aio_pika.connect(admin_url(stack, tenant_id))
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(tenant_queue(tenant_id), passive=True)
        return int(queue.declaration_result.consumer_count or 0)


async def _until(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def _make_due(db: asyncpg.Connection, tenant_id: str) -> None:
    """As if the certificates were 1 day from expiry: the CA now answers renew: true."""
    await db.execute(
        "UPDATE agents SET cert_not_after = now() + interval '1 day' WHERE tenant_id = $1",
        uuid.UUID(tenant_id),
    )


async def _old_certificate_refused(stack: Stack, cert: bytes, key_pem: bytes, folder: Path) -> Any:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "old.crt").write_bytes(cert)
    key_file = folder / "old.key"
    key_file.write_bytes(key_pem)
    key_file.chmod(0o600)
    context = client_context(
        stack.pki.service_ca_cert, cert_file=folder / "old.crt", key_file=key_file
    )
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http,
        http.post(f"{stack.services.ca_url}/agents/bootstrap", json={}) as resp,
    ):
        return resp.status, (await resp.json())["error"]


# -- three agents renew under a steady load of sign-ins ------------------------------------------


async def test_three_agents_renew_under_load_without_a_failed_sign_in(
    stack: Stack, tenant: Tenant, keys: AgentKeys
) -> None:
    contoso = stack.demo.tenants[0]
    alice = next(u for u in contoso.users if u.uid == "alice")
    regs = [await _register(stack, tenant, f"agent{i}") for i in range(3)]
    old = {
        r.record.agent_id: (r.kid, r.dir.certificate.read_bytes(), r.dir.key.read_bytes())
        for r in regs
    }
    agents = Agents(stack, tenant)
    db = await asyncpg.connect(stack.postgres_dsn)
    connection = await aio_pika.connect(sts_url(stack, tenant.tenant_id))
    stop_load = asyncio.Event()
    try:
        for r in regs:
            agents.start(r.dir.path)

        async def three_consumers() -> bool:
            return await _consumers(stack, tenant.tenant_id) >= 3

        await _until(three_consumers, 60, "three consumers")
        signins = SignIns(connection, keys, tenant.tenant_id, sts_user(stack))
        load = asyncio.create_task(signins.load(stop_load, alice.username, alice.password, 4))
        await asyncio.sleep(2)  # a steady state first

        started = time.monotonic()
        await _make_due(db, tenant.tenant_id)

        async def all_renewed() -> bool:
            count = await db.fetchval(
                """SELECT count(*) FROM agent_renewals
                   WHERE tenant_id = $1 AND completed_at IS NOT NULL""",
                uuid.UUID(tenant.tenant_id),
            )
            return bool(count >= 3)

        await _until(all_renewed, 180, "three completed renewals")
        renewal_s = time.monotonic() - started
        # Sign-ins go on after the switch, sealed for the new keys only.
        await _until(
            lambda: _cache_has_new_keys(keys, tenant.tenant_id, old), 30, "the STS's new keys"
        )
        await asyncio.sleep(2)
        stop_load.set()
        await load
    finally:
        stop_load.set()
        await connection.close()
        await agents.close()

    total = len(signins.results)
    print(f"\n3-agent tenant renewed in {renewal_s:.1f} s; {total} sign-ins, "
          f"{len(signins.failures)} failed")  # fmt: skip
    assert total > 20
    assert signins.failures == []

    rows = await db.fetch(
        """SELECT agent_id::text AS agent_id, old_kid, new_kid, renewed_at, completed_at
           FROM agent_renewals WHERE tenant_id = $1 ORDER BY renewed_at""",
        uuid.UUID(tenant.tenant_id),
    )
    await db.close()
    assert sorted(row["agent_id"] for row in rows) == sorted(old), rows  # once each
    for earlier, later in itertools.pairwise(rows):
        assert earlier["completed_at"] <= later["renewed_at"], "two renewals overlapped"
    for row in rows:
        kid, cert, key_pem = old[row["agent_id"]]
        assert row["old_kid"] == kid != row["new_kid"]
        assert await _old_certificate_refused(
            stack, cert, key_pem, tenant.folder / f"old-{row['agent_id']}"
        ) == (401, "certificate_superseded")
    for r in regs:
        assert state.load(r.dir.path).kid != old[r.record.agent_id][0]


async def _cache_has_new_keys(
    keys: AgentKeys, tenant_id: str, old: dict[str, tuple[str, bytes, bytes]]
) -> bool:
    kids = {a.kid for a in await keys.for_tenant(tenant_id)}
    return len(kids) == 3 and not kids & {kid for kid, _, _ in old.values()}


# -- SIGKILL at each step of a renewal ------------------------------------------------------------


@pytest.mark.parametrize("step", list(renewal.Step))
async def test_an_agent_killed_during_renewal_restarts_and_works(
    stack: Stack, tenant: Tenant, keys: AgentKeys, step: renewal.Step
) -> None:
    contoso = stack.demo.tenants[0]
    alice = next(u for u in contoso.users if u.uid == "alice")
    reg = await _register(stack, tenant, "agent")
    old_kid = reg.kid
    db = await asyncpg.connect(stack.postgres_dsn)
    try:
        await _make_due(db, tenant.tenant_id)
    finally:
        await db.close()
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.integration.renewal_crash_child", str(reg.dir.path), step,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    async with asyncio.timeout(60):
        output, _ = await child.communicate()
    assert child.returncode == -9, output.decode()

    started = time.monotonic()
    agents = Agents(stack, tenant)
    connection = await aio_pika.connect(sts_url(stack, tenant.tenant_id))
    db = await asyncpg.connect(stack.postgres_dsn)
    try:
        agents.start(reg.dir.path)

        async def consuming() -> bool:
            return await _consumers(stack, tenant.tenant_id) >= 1

        await _until(consuming, 60, "the restarted agent consuming")
        restart_s = time.monotonic() - started
        signins = SignIns(connection, keys, tenant.tenant_id, sts_user(stack))
        channel = await connection.channel()
        outcome = await signins.one(channel, alice.username, alice.password)
        await channel.close()
        row = await db.fetchrow(
            "SELECT kid FROM agents WHERE id = $1", uuid.UUID(reg.record.agent_id)
        )
        lease = await db.fetchval(
            "SELECT count(*) FROM leases WHERE tenant_id = $1", uuid.UUID(tenant.tenant_id)
        )
    finally:
        await connection.close()
        await db.close()
        await agents.close()
    print(f"\nkilled at {step}: restarted and consuming in {restart_s:.1f} s")
    assert outcome == "success"
    loaded = state.load(reg.dir.path)
    assert row["kid"] == loaded.kid
    # Killed before the CA was asked: the leftover key is sent at start, so every
    # crash point ends renewed, and the lease is free again (the first bootstrap with
    # the new certificate completed the renewal).
    assert loaded.kid != old_kid
    assert lease == 0
    assert not loaded.dir.pending_key.exists() and not loaded.dir.pending_certificate.exists()


async def test_a_single_agent_renewal_time_and_a_request_sealed_for_the_old_key(
    stack: Stack, tenant: Tenant, keys: AgentKeys
) -> None:
    """The time from 'due' to the agent consuming with its new certificate; a request the
    STS sealed for the old key just before the switch is still answered."""
    contoso = stack.demo.tenants[0]
    alice = next(u for u in contoso.users if u.uid == "alice")
    reg = await _register(stack, tenant, "solo")
    agents = Agents(stack, tenant)
    db = await asyncpg.connect(stack.postgres_dsn)
    connection = await aio_pika.connect(sts_url(stack, tenant.tenant_id))
    signins = SignIns(connection, keys, tenant.tenant_id, sts_user(stack))
    try:
        agents.start(reg.dir.path)

        async def consuming() -> bool:
            return await _consumers(stack, tenant.tenant_id) >= 1

        await _until(consuming, 60, "the agent consuming")
        late = await signins.seal(alice.username, alice.password, lifetime_s=60)
        started = time.monotonic()
        await _make_due(db, tenant.tenant_id)

        async def renewed() -> bool:
            value = await db.fetchval(
                "SELECT completed_at FROM agent_renewals WHERE agent_id = $1",
                uuid.UUID(reg.record.agent_id),
            )
            return value is not None

        await _until(renewed, 60, "the renewal")
        elapsed = time.monotonic() - started
        channel = await connection.channel()
        late_outcome = await signins.send(channel, *late)
        fresh_outcome = await signins.one(channel, alice.username, alice.password)
        await channel.close()
    finally:
        await connection.close()
        await db.close()
        await agents.close()
    print(f"\none agent renewed in {elapsed:.2f} s (heartbeat every 0.3 s)")
    new_kid = state.load(reg.dir.path).kid
    assert new_kid != reg.kid
    assert [r.kid for r in late[0].recipients] == [reg.kid]
    assert (late_outcome, fresh_outcome) == ("success", "success")


async def test_an_agent_not_renewed_stops_consuming_before_expiry(
    stack: Stack, tenant: Tenant
) -> None:
    """A margin longer than the certificate's life left: the guard fires at once."""
    reg = await _register(stack, tenant, "expiring")
    _logs_to(io.StringIO())
    settings = load_settings(
        state_dir=reg.dir.path,
        heartbeat_interval_s=0.3,
        expiry_margin_s=200 * 86400,
        **directory_overrides(stack),
    )
    async with asyncio.timeout(60):
        with pytest.raises(state.CertificateExpired, match="stopped consuming"):
            await runner.run(settings, stop=asyncio.Event())
    assert await _consumers(stack, tenant.tenant_id) == 0
