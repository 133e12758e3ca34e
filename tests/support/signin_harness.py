"""The sign-in path's harness: throwaway tenants, in-process agents, in-process STS replicas.

Agents here are the REAL `agent.consumer.SignInHandler` with `agent.directory.FakeDirectory`
(tests may import both packages; `sts` never imports `agent`), consuming a throwaway
tenant's queue (in the tenant's own vhost, made as the CA makes it) through the stack's
admin AMQP URL, so the stack's own registered agents never see these requests. Each
tenant is inserted directly in a private database: tenant, verified domain, synced users
and agent rows with freshly generated RSA keys.

`signin_sts` runs the STS app in-process (aiohttp TestServer) against a given database
and the stack's RabbitMQ, waiting until its LISTEN connection and broker link are up; two
of them on one database are two replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from agent.consumer import SignInHandler
from agent.directory import FakeDirectory
from common.contracts import REPLY_EXCHANGE, tenant_queue
from common.envelope import kid_for
from common.wire import Status
from infra.stack import Stack
from sts.agent_keys import AGENT_KEYS
from sts.app import create_app
from sts.dispatcher import DISPATCHER, Dispatcher
from sts.settings import StsSettings
from tests.broker import admin_url, drop_tenant, ensure_tenant, sts_user
from tests.support.sts_harness import free_port, new_signing_dir

Consumer = Callable[[AbstractIncomingMessage], Awaitable[None]]


@dataclass(frozen=True)
class AgentIdentity:
    id: str
    tenant_id: str
    key: RSAPrivateKey = field(repr=False)

    @property
    def kid(self) -> str:
        return kid_for(self.key.public_key())


@dataclass
class ThrowawayTenant:
    id: str
    name: str
    domain: str
    agents: list[AgentIdentity]
    users: dict[str, tuple[str, Status]]  # username -> (password, status for it)

    def username(self, local: str) -> str:
        return f"{local}@{self.domain}"


def new_key() -> RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


async def add_agent_row(
    conn: asyncpg.Connection, tenant_id: str, key: RSAPrivateKey | None = None
) -> AgentIdentity:
    """Register an agent the way the CA stores it (docs/design.md §3.1, step 5)."""
    agent = AgentIdentity(str(uuid.uuid4()), tenant_id, key or new_key())
    spki = agent.key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    await conn.execute(
        """INSERT INTO agents (id, tenant_id, host, version, spki, kid, cert_serial,
                               cert_not_after)
           VALUES ($1, $2, 'test-host', '0.0.0', $3, $4, $5, $6)""",
        uuid.UUID(agent.id),
        uuid.UUID(tenant_id),
        spki,
        agent.kid,
        secrets.token_hex(16),
        dt.datetime.now(dt.UTC) + dt.timedelta(days=1),
    )
    return agent


async def create_tenant(
    dsn: str, *, agents: int = 2, users: Mapping[str, tuple[str, Status]] | None = None
) -> ThrowawayTenant:
    """A tenant with a verified domain, synced users (local part -> password, status) and
    `agents` agent rows."""
    tenant_id = str(uuid.uuid4())
    domain = f"t{uuid.UUID(tenant_id).hex[:12]}.test"
    full_users = {f"{local}@{domain}": value for local, value in (users or {}).items()}
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO tenants (id, name) VALUES ($1, $2)", uuid.UUID(tenant_id), domain
        )
        await conn.execute(
            "INSERT INTO domains (name, tenant_id, is_verified) VALUES ($1, $2, true)",
            domain,
            uuid.UUID(tenant_id),
        )
        for username in full_users:
            await conn.execute(
                """INSERT INTO users (id, tenant_id, username, immutable_id, display_name)
                   VALUES ($1, $2, $3, $4, $5)""",
                uuid.uuid4(),
                uuid.UUID(tenant_id),
                username,
                str(uuid.uuid4()),
                username.split("@")[0].title(),
            )
        identities = [await add_agent_row(conn, tenant_id) for _ in range(agents)]
    finally:
        await conn.close()
    return ThrowawayTenant(tenant_id, domain, domain, identities, full_users)


def handler_for(
    agent: AgentIdentity, directory: FakeDirectory, exchange: AbstractExchange, publisher: str
) -> SignInHandler:
    return SignInHandler(
        agent_id=agent.id,
        tenant_id=agent.tenant_id,
        kid=agent.kid,
        private_key=agent.key,
        directory=directory,
        exchange=exchange,
        publisher=publisher,
    )


@dataclass
class Consumers:
    """Consumers on one tenant queue, through one admin connection."""

    channel: AbstractChannel
    exchange: AbstractExchange  # pta.replies, for replies the test crafts itself
    handlers: list[SignInHandler]


@contextlib.asynccontextmanager
async def consuming(
    stack: Stack,
    tenant: ThrowawayTenant,
    *,
    directory: FakeDirectory | None = None,
    agents: list[AgentIdentity] | None = None,
    wrap: Callable[[SignInHandler, AbstractExchange], Consumer] | None = None,
    prefetch: int = 32,
) -> AsyncIterator[Consumers]:
    """Run real SignInHandlers (FakeDirectory) for the tenant's agents on its queue.

    `wrap(handler, exchange)` may replace each agent's consumer (forgers, silent agents).
    """
    directory = directory if directory is not None else FakeDirectory(users=tenant.users)
    await ensure_tenant(stack, tenant.id)  # what the CA does at the first registration
    connection = await aio_pika.connect(admin_url(stack, tenant.id))
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        queue = await channel.get_queue(tenant_queue(tenant.id), ensure=True)
        exchange = await channel.get_exchange(REPLY_EXCHANGE)
        handlers = []
        for agent in agents if agents is not None else tenant.agents:
            handler = handler_for(agent, directory, exchange, sts_user(stack))
            handlers.append(handler)
            await queue.consume(wrap(handler, exchange) if wrap else handler)
        yield Consumers(channel, exchange, handlers)
    finally:
        await connection.close()


async def delete_queue(stack: Stack, tenant_id: str) -> None:
    """Delete the tenant's vhost, with its queue and exchange."""
    await drop_tenant(stack, tenant_id)


@dataclass
class SigninSts:
    client: TestClient[web.Request, web.Application]
    settings: StsSettings

    @property
    def app(self) -> web.Application:
        app = self.client.app
        assert app is not None
        return app

    @property
    def dispatcher(self) -> Dispatcher:
        return self.app[DISPATCHER]

    async def sign_in(
        self,
        tenant: ThrowawayTenant,
        username: str,
        password: str,
        *,
        scope: str = "openid profile offline_access",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """The password grant at the token endpoint: (HTTP status, JSON body)."""
        r = await self.client.post(
            f"/{tenant.id}/oauth2/v2.0/token",
            data={
                "grant_type": "password",
                "client_id": "pta-agent",
                "scope": scope,
                "username": username,
                "password": password,
                "client_info": "1",
            },
            headers=headers,
        )
        return r.status, await r.json()


SIGNIN_DEFAULTS: dict[str, Any] = {
    "request_timeout_s": 2.0,
    "consumer_check_interval_s": 0.5,
    "lockout_threshold": 3,
    "tenant_cache_ttl_s": 0,
}


def signin_settings(stack: Stack, folder: Path, dsn: str, **overrides: Any) -> StsSettings:
    port = free_port()
    options = {**SIGNIN_DEFAULTS, **overrides}
    return StsSettings(
        public_url=options.pop("public_url", f"http://127.0.0.1:{port}"),
        port=port,
        postgres_dsn=dsn,
        signing_key_dir=new_signing_dir(folder / f"signing-{port}"),
        amqp_url=stack.rabbitmq.sts_amqp_url,
        **options,
    )


async def wait_started(app: web.Application) -> None:
    """The LISTEN connection and the broker link are up (events, not sleeps)."""
    async with asyncio.timeout(15):
        await app[AGENT_KEYS].listening.wait()
        await app[DISPATCHER].ready.wait()


@contextlib.asynccontextmanager
async def signin_sts(
    stack: Stack, folder: Path, dsn: str, **overrides: Any
) -> AsyncIterator[SigninSts]:
    """One in-process STS replica on `dsn` and the stack's broker."""
    settings = signin_settings(stack, folder, dsn, **overrides)
    server = TestServer(create_app(settings), port=settings.port)
    await server.start_server()
    client = TestClient(server)
    try:
        await wait_started(server.app)
        yield SigninSts(client, settings)
    finally:
        await client.close()


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait for a condition another task brings about (polled: there is no event for it)."""
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 -- counters have no event to await
            await asyncio.sleep(0.01)  # yield to the consumer tasks between checks
