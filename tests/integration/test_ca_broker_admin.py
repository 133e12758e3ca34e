"""The RabbitMQ management adapter against the real broker: idempotence, what it creates,
and every failure to ask reported as BrokerUnavailable."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator

import aio_pika
import aiohttp
import pytest
import pytest_asyncio
from yarl import URL

from ca.broker_admin import RabbitManagement
from ca.errors import BrokerUnavailable
from common.contracts import REPLY_EXCHANGE, TENANT_QUEUE_ARGUMENTS, tenant_queue, tenant_vhost
from infra.stack import Stack
from tests.broker import drop_tenant, management_call

pytestmark = pytest.mark.stack


@pytest_asyncio.fixture(loop_scope="session")
async def broker(stack: Stack) -> AsyncIterator[RabbitManagement]:
    async with aiohttp.ClientSession() as session:
        yield RabbitManagement(
            base_url=stack.rabbitmq.management_url,
            user=stack.demo.rabbitmq_admin_user,
            password=stack.demo.rabbitmq_admin_password,
            session=session,
            timeout_s=10,
            sts_user=stack.demo.rabbitmq_sts_user,
        )


async def test_a_tenant_gets_its_own_vhost_queue_and_exchange_once(
    stack: Stack, broker: RabbitManagement
) -> None:
    tenant = str(uuid.uuid4())
    vhost = tenant_vhost(tenant)
    assert await broker.consumer_count(tenant) is None
    try:
        await broker.ensure_tenant(tenant)
        await broker.ensure_tenant(tenant)  # idempotent
        status, queue = await management_call(
            stack, "GET", f"/api/queues/{vhost}/{tenant_queue(tenant)}"
        )
        assert status == 200
        assert queue["durable"] is True and queue["auto_delete"] is False
        assert queue["arguments"] == TENANT_QUEUE_ARGUMENTS
        status, exchange = await management_call(
            stack, "GET", f"/api/exchanges/{vhost}/{REPLY_EXCHANGE}"
        )
        assert status == 200 and exchange["type"] == "direct" and exchange["durable"] is True
        status, queues = await management_call(stack, "GET", f"/api/queues/{vhost}")
        assert [q["name"] for q in queues] == [tenant_queue(tenant)]  # nothing else in it
        assert await broker.consumer_count(tenant) == 0
    finally:
        await drop_tenant(stack, tenant)


async def test_agent_user_create_rotate_delete(stack: Stack, broker: RabbitManagement) -> None:
    tenant, username = str(uuid.uuid4()), f"agent-{uuid.uuid4()}"
    first, second = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    await broker.ensure_tenant(tenant)
    await broker.put_agent_user(username, first, tenant)
    status, user = await management_call(stack, "GET", f"/api/users/{username}")
    assert status == 200 and user["tags"] in ("", [])
    status, permissions = await management_call(
        stack, "GET", f"/api/permissions/{tenant_vhost(tenant)}/{username}"
    )
    assert status == 200
    assert (permissions["configure"], permissions["write"], permissions["read"]) == (
        "^$",
        r"^pta\.replies$",
        rf"^pta\.tenant\.{tenant}$",
    )
    await broker.put_agent_user(username, second, tenant)  # rotation
    url = URL(stack.rabbitmq.admin_url(tenant_vhost(tenant)))
    connection = await aio_pika.connect(str(url.with_user(username).with_password(second)))
    await connection.close()
    await broker.delete_user(username)
    await broker.delete_user(username)  # deleting a missing user is fine
    status, _ = await management_call(stack, "GET", f"/api/users/{username}")
    assert status == 404
    await drop_tenant(stack, tenant)


async def test_hostile_tenant_ids_never_reach_the_broker(broker: RabbitManagement) -> None:
    for hostile in (".*", "x|.*", "A0000000-0000-0000-0000-000000000000"):
        with pytest.raises(ValueError):
            await broker.put_agent_user("agent-x", "key", hostile)
        with pytest.raises(ValueError):
            await broker.ensure_tenant(hostile)


async def test_failures_to_ask_are_broker_unavailable(stack: Stack) -> None:
    async with aiohttp.ClientSession() as session:
        wrong_password = RabbitManagement(
            base_url=stack.rabbitmq.management_url,
            user=stack.demo.rabbitmq_admin_user,
            password="wrong",
            session=session,
            timeout_s=5,
        )
        with pytest.raises(BrokerUnavailable) as caught:
            await wrong_password.ensure_tenant(str(uuid.uuid4()))
        assert "401" in caught.value.detail and "wrong" not in str(caught.value)
        nobody = RabbitManagement(
            base_url="http://127.0.0.1:9", user="u", password="p", session=session, timeout_s=2
        )
        with pytest.raises(BrokerUnavailable):
            await nobody.delete_user("agent-x")
