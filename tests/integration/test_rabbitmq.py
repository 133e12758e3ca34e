"""RabbitMQ: permissions set through the management API are enforced by the broker."""

from __future__ import annotations

import base64
import secrets
import uuid
from urllib.parse import quote

import aio_pika
import aiohttp
import aiormq
import pytest

from common.contracts import REPLY_EXCHANGE, VHOST
from infra.stack import Stack

pytestmark = pytest.mark.stack


async def _ignore(message: aio_pika.abc.AbstractIncomingMessage) -> None:
    """A consumer that does nothing: only whether consuming is allowed matters."""


def _auth(stack: Stack) -> dict[str, str]:
    raw = f"{stack.demo.rabbitmq_admin_user}:{stack.demo.rabbitmq_admin_password}"
    return {"Authorization": "Basic " + base64.b64encode(raw.encode()).decode()}


async def test_read_permission_on_one_tenant_queue_only(stack: Stack) -> None:
    tenant_a, tenant_b = uuid.uuid4(), uuid.uuid4()
    queue_a, queue_b = f"pta.tenant.{tenant_a}", f"pta.tenant.{tenant_b}"
    admin = await aio_pika.connect(stack.amqp_url)
    user, key = f"test-{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(24)
    mgmt = stack.rabbitmq.management_url
    try:
        ch = await admin.channel()
        for q in (queue_a, queue_b):
            await ch.declare_queue(q, auto_delete=True)
        async with aiohttp.ClientSession(headers=_auth(stack)) as http:
            r = await http.put(f"{mgmt}/api/users/{user}", json={"password": key, "tags": ""})
            assert r.status in (201, 204)
            r = await http.put(
                f"{mgmt}/api/permissions/{VHOST}/{user}",
                json={
                    "configure": "^$",
                    "write": r"^pta\.replies$",
                    "read": rf"^pta\.tenant\.{tenant_a}$",
                },
            )
            assert r.status in (201, 204)
        url = f"amqp://{user}:{quote(key, safe='')}@127.0.0.1:{stack.layout.ports.amqp}/{VHOST}"
        agent = await aio_pika.connect(url)
        try:
            own = await agent.channel()
            q = await own.get_queue(queue_a, ensure=False)
            await q.consume(_ignore)  # allowed
            other = await agent.channel()
            with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
                qb = await other.get_queue(queue_b, ensure=False)
                await qb.consume(_ignore)
            third = await agent.channel()
            with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
                await third.declare_queue(f"pta.tenant.{uuid.uuid4()}")
            exch = await (await agent.channel()).get_exchange(REPLY_EXCHANGE, ensure=False)
            await exch.publish(aio_pika.Message(b"{}"), routing_key="nobody")  # write allowed
        finally:
            await agent.close()
    finally:
        async with aiohttp.ClientSession(headers=_auth(stack)) as http:
            await http.delete(f"{mgmt}/api/users/{user}")
        await admin.close()
