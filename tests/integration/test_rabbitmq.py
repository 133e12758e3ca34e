"""RabbitMQ: the permissions the CA sets are enforced by the broker, for agents and for
the STS's own broker user (issue 8, finding 9), in each tenant's vhost."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from urllib.parse import quote

import aio_pika
import aiohttp
import aiormq
import pytest
import pytest_asyncio
from yarl import URL

from ca.broker_admin import RabbitManagement, sts_permissions
from common.contracts import REPLY_EXCHANGE, tenant_queue, tenant_vhost, vhost_url
from infra.stack import Stack
from tests.broker import (
    VHOST_REFUSED,
    drop_tenant,
    management_call,
    management_client,
    sts_url,
    sts_user,
)

pytestmark = pytest.mark.stack


async def _ignore(message: aio_pika.abc.AbstractIncomingMessage) -> None:
    """A consumer that does nothing: only whether consuming is allowed matters."""


@pytest_asyncio.fixture(loop_scope="session")
async def broker(stack: Stack) -> AsyncIterator[RabbitManagement]:
    async with aiohttp.ClientSession() as session:
        yield management_client(stack, session)


@pytest_asyncio.fixture(loop_scope="session")
async def tenants(stack: Stack, broker: RabbitManagement) -> AsyncIterator[tuple[str, str]]:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    for tenant in (a, b):
        await broker.ensure_tenant(tenant)
    try:
        yield a, b
    finally:
        for tenant in (a, b):
            await drop_tenant(stack, tenant)


async def test_agent_reads_its_own_tenant_queue_only(
    stack: Stack, broker: RabbitManagement, tenants: tuple[str, str]
) -> None:
    tenant_a, tenant_b = tenants
    user, key = f"test-{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(24)
    await broker.put_agent_user(user, key, tenant_a)
    own = URL(stack.rabbitmq.admin_url(tenant_vhost(tenant_a)))
    url = str(own.with_user(user).with_password(key))
    try:
        agent = await aio_pika.connect(url)
        try:
            q = await (await agent.channel()).get_queue(tenant_queue(tenant_a), ensure=False)
            await q.consume(_ignore)  # allowed
            with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
                await (await agent.channel()).declare_queue(f"pta.tenant.{uuid.uuid4()}")
            exch = await (await agent.channel()).get_exchange(REPLY_EXCHANGE, ensure=False)
            await exch.publish(aio_pika.Message(b"{}"), routing_key="nobody")  # write allowed
        finally:
            await agent.close()
        with pytest.raises(VHOST_REFUSED, match=r"Connection\.Close"):  # another tenant's vhost
            await aio_pika.connect(vhost_url(url, tenant_vhost(tenant_b)))
    finally:
        await broker.delete_user(user)


async def test_the_sts_broker_user_has_exactly_its_permissions(
    stack: Stack, tenants: tuple[str, str]
) -> None:
    """Not the administrator: no tags, and in each tenant vhost only what the dispatcher
    needs (ca.broker_admin.sts_permissions); nothing in any other vhost."""
    user = sts_user(stack)
    assert user and user != stack.demo.rabbitmq_admin_user
    status, found = await management_call(stack, "GET", f"/api/users/{quote(user, safe='')}")
    assert status == 200 and found["tags"] in ("", [])
    status, granted = await management_call(
        stack, "GET", f"/api/users/{quote(user, safe='')}/permissions"
    )
    assert status == 200
    by_vhost = {p["vhost"]: p for p in granted}
    for tenant in tenants:
        p = by_vhost[tenant_vhost(tenant)]
        assert {k: p[k] for k in ("configure", "write", "read")} == sts_permissions()
    assert all(v.startswith("pta.") for v in by_vhost)  # no "/" and no shared vhost
    assert sts_permissions() == {
        "configure": r"^sts\.[A-Za-z0-9_-]{1,64}\.[0-9a-f]{12}$",
        "write": r"^(amq\.default|sts\.[A-Za-z0-9_-]{1,64}\.[0-9a-f]{12})$",
        "read": r"^(pta\.replies|sts\.[A-Za-z0-9_-]{1,64}\.[0-9a-f]{12})$",
    }


async def test_the_sts_broker_user_can_do_what_the_dispatcher_does_and_nothing_more(
    stack: Stack, tenants: tuple[str, str]
) -> None:
    tenant, _ = tenants
    connection = await aio_pika.connect(sts_url(stack, tenant))
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        # What the dispatcher does: passive declares, its exclusive reply queue bound to
        # pta.replies, consume it, publish to the tenant queue naming itself.
        exchange = await channel.get_exchange(REPLY_EXCHANGE, ensure=True)
        reply = await channel.declare_queue(
            f"sts.pytest.{secrets.token_hex(6)}", exclusive=True, auto_delete=True
        )
        await reply.bind(exchange, routing_key=reply.name)
        await reply.consume(_ignore, no_ack=True)
        declared = await channel.declare_queue(tenant_queue(tenant), passive=True)
        assert declared.declaration_result.consumer_count == 0
        await channel.default_exchange.publish(
            aio_pika.Message(b"{}", user_id=sts_user(stack), expiration=5),
            routing_key=tenant_queue(tenant),
            mandatory=True,
        )

        refused = [
            # Consuming (or reading) a tenant queue: only agents may.
            lambda ch: _consume(ch, tenant_queue(tenant)),
            lambda ch: _get(ch, tenant_queue(tenant)),
            # Publishing to the reply exchange: only agents reply.
            lambda ch: _publish(ch, REPLY_EXCHANGE, reply.name),
            # Declaring, redeclaring or deleting what the CA declares.
            lambda ch: ch.declare_queue(f"pta.tenant.{uuid.uuid4()}", durable=True),
            lambda ch: ch.declare_exchange(REPLY_EXCHANGE, "direct", durable=True),
            lambda ch: ch.queue_delete(tenant_queue(tenant)),
            # A queue of another name than its reply queues.
            lambda ch: ch.declare_queue(f"other.{uuid.uuid4()}", exclusive=True),
        ]  # fmt: skip
        for attempt in refused:
            fresh = await connection.channel()
            with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
                await attempt(fresh)
        # Naming another publisher: the broker refuses it (the agents' check relies on it).
        forging = await connection.channel()
        with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
            await forging.default_exchange.publish(
                aio_pika.Message(b"{}", user_id=stack.demo.rabbitmq_admin_user),
                routing_key=tenant_queue(tenant),
            )
            await forging.get_queue(reply.name, ensure=True)  # the close arrives by then
    finally:
        await connection.close()
    # The default vhost: no permission at all.
    with pytest.raises(VHOST_REFUSED, match=r"Connection\.Close"):
        await aio_pika.connect(vhost_url(stack.rabbitmq.sts_amqp_url, "/"))


async def _consume(channel: aio_pika.abc.AbstractChannel, name: str) -> None:
    queue = await channel.get_queue(name, ensure=False)
    await queue.consume(_ignore)


async def _get(channel: aio_pika.abc.AbstractChannel, name: str) -> None:
    queue = await channel.get_queue(name, ensure=False)
    await queue.get(no_ack=True, fail=False)


async def _publish(channel: aio_pika.abc.AbstractChannel, exchange: str, key: str) -> None:
    target = await channel.get_exchange(exchange, ensure=False)
    await target.publish(aio_pika.Message(b"{}"), routing_key=key)
    await channel.get_exchange(exchange, ensure=True)  # the refusal arrives by then


async def test_every_amqp_connection_of_the_stack_is_tls(stack: Stack) -> None:
    """Issue 8, finding 13: the broker speaks AMQPS only; the stack's agents and STS
    replicas connect over TLS (agents verify it with the CA bundle they pinned)."""
    status, connections = await management_call(stack, "GET", "/api/connections")
    assert status == 200
    agents = [c for c in connections if str(c.get("user", "")).startswith("agent-")]
    assert len(agents) >= len(stack.services.stack_json_agents())
    assert all(c["ssl"] is True for c in connections), [
        (c["user"], c["ssl"]) for c in connections if not c["ssl"]
    ]
    assert stack.services.ca_program().env["PTA_CA_AGENT_AMQP_URL"].startswith("amqps://")
    for program in stack.services.sts_programs():
        assert program.env["PTA_STS_AMQP_URL"].startswith("amqps://")
