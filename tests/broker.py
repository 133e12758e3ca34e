"""The test stack's broker as tests use it: tenant vhosts, and URLs by role.

Each tenant has its own vhost (`common.contracts.tenant_vhost`) that the CA creates with
`ca.broker_admin.RabbitManagement.ensure_tenant`; tests that make throwaway tenants call
the same code here, and `drop_tenant` deletes the vhost (queue, exchange, permissions).
URLs are AMQPS, verified with the stack's service TLS CA (`?cafile=`).
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

import aiohttp
import aiormq
from yarl import URL

from ca.broker_admin import RabbitManagement
from common.contracts import tenant_vhost, vhost_url
from infra.stack import Stack


def admin_url(stack: Stack, tenant_id: str) -> str:
    """The broker administrator on the tenant's vhost (to observe or to attack)."""
    return stack.rabbitmq.admin_url(tenant_vhost(tenant_id))


def sts_url(stack: Stack, tenant_id: str) -> str:
    """The STS's broker user on the tenant's vhost: the only publisher agents accept."""
    return vhost_url(stack.rabbitmq.sts_amqp_url, tenant_vhost(tenant_id))


def sts_user(stack: Stack) -> str:
    return URL(stack.rabbitmq.sts_amqp_url).user or ""


async def ensure_tenant(stack: Stack, tenant_id: str) -> None:
    """What the CA does at a tenant's first registration: vhost, permissions, exchange,
    queue (`ca.broker_admin`)."""
    async with aiohttp.ClientSession() as session:
        await management_client(stack, session).ensure_tenant(tenant_id)


def management_client(stack: Stack, session: aiohttp.ClientSession) -> RabbitManagement:
    return RabbitManagement(
        base_url=stack.rabbitmq.management_url,
        user=stack.demo.rabbitmq_admin_user,
        password=stack.demo.rabbitmq_admin_password,
        session=session,
        timeout_s=10,
        sts_user=stack.demo.rabbitmq_sts_user,
    )


async def drop_tenant(stack: Stack, tenant_id: str) -> None:
    """Delete the tenant's vhost and all it holds (no error if it does not exist)."""
    await management_call(stack, "DELETE", f"/api/vhosts/{quote(tenant_vhost(tenant_id), safe='')}")


async def management_call(stack: Stack, method: str, path: str) -> tuple[int, Any]:
    """One call to the RabbitMQ management API as the admin (to observe the broker)."""
    raw = f"{stack.demo.rabbitmq_admin_user}:{stack.demo.rabbitmq_admin_password}"
    headers = {"Authorization": "Basic " + base64.b64encode(raw.encode()).decode()}
    async with aiohttp.ClientSession() as http:
        async with http.request(
            method, stack.rabbitmq.management_url + path, headers=headers
        ) as resp:
            body = await resp.json() if resp.content_type == "application/json" else None
            return resp.status, body


# A vhost the user has no permission on: RabbitMQ answers Connection.Open with
# Connection.Close (530 NOT_ALLOWED), which aiormq 6 reports as an unexpected frame.
VHOST_REFUSED = aiormq.exceptions.InvalidFrameError
