"""The sign-in path when its connections break: broker link, LISTEN connection, no broker.

- The broker closes the STS's connection while a sign-in waits: the pending request fails
  at once (AADSTS80001, not at the deadline), and after the robust reconnect the next
  sign-in works again on a re-declared reply queue.
- PostgreSQL ends the LISTEN connection: it reconnects, and everything cached is
  invalidated (notifications sent meanwhile are lost).
- A broker that cannot be reached does not stop the STS: admins still sign in, synced
  users get AADSTS80001.
"""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import asyncpg
import pytest
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage
from aiohttp.test_utils import TestClient, TestServer

from agent.consumer import SignInHandler
from common.wire import Status
from infra.stack import Stack
from sts.agent_keys import AGENT_KEYS, LISTEN_APPLICATION_NAME
from sts.app import create_app
from sts.signin import PASSWORD_VALIDATOR
from tests.support.signin_harness import (
    Consumer,
    consuming,
    create_tenant,
    delete_queue,
    signin_settings,
    signin_sts,
    until,
)
from tests.support.sts_harness import private_database

pytestmark = pytest.mark.stack


async def management(stack: Stack, method: str, path: str) -> Any:
    raw = f"{stack.demo.rabbitmq_admin_user}:{stack.demo.rabbitmq_admin_password}"
    headers = {"Authorization": "Basic " + base64.b64encode(raw.encode()).decode()}
    async with (
        aiohttp.ClientSession(headers=headers) as http,
        http.request(method, stack.rabbitmq.management_url + path) as r,
    ):
        assert r.status < 300, await r.text()
        return await r.json() if r.status == 200 else None


async def connection_named(stack: Stack, name: str) -> str:
    """The broker's name of the connection whose client called itself `name`."""
    async with asyncio.timeout(15):
        while True:
            for conn in await management(stack, "GET", "/api/connections"):
                if conn.get("client_properties", {}).get("connection_name") == name:
                    return str(conn["name"])
            await asyncio.sleep(0.2)  # the management API lists new connections shortly after


async def test_a_lost_broker_connection_fails_pending_sign_ins_at_once(
    stack: Stack, tmp_path: Path
) -> None:
    async with private_database(stack) as dsn:
        tenant = await create_tenant(dsn, agents=1, users={"kim": ("Pw-1", Status.SUCCESS)})
        taken = asyncio.Event()

        def silent(_h: SignInHandler, _e: AbstractExchange) -> Consumer:
            async def consume(message: AbstractIncomingMessage) -> None:
                taken.set()
                await message.ack()

            return consume

        try:
            async with signin_sts(stack, tmp_path, dsn, request_timeout_s=10) as sts:
                dispatcher = sts.dispatcher
                async with consuming(stack, tenant, wrap=silent):
                    pending = asyncio.create_task(
                        sts.sign_in(tenant, tenant.username("kim"), "Pw-1")
                    )
                    async with asyncio.timeout(5):
                        await taken.wait()
                    # The tenant's link opened for this sign-in (one per tenant vhost).
                    name = await connection_named(stack, dispatcher.reply_key)
                    started = time.monotonic()
                    await management(stack, "DELETE", f"/api/connections/{quote(name, safe='')}")
                    status, body = await pending
                    assert (status, body["error_codes"]) == (503, [80001])
                    assert time.monotonic() - started < 3  # not the 10 s deadline
                    assert len(dispatcher.pending) == 0
                async with consuming(stack, tenant):

                    async def works() -> bool:
                        status, _ = await sts.sign_in(tenant, tenant.username("kim"), "Pw-1")
                        return status == 200

                    async with asyncio.timeout(15):
                        # 80001 until the robust reconnect is done; it has no event to await.
                        while not await works():  # noqa: ASYNC110
                            await asyncio.sleep(0.2)
        finally:
            await delete_queue(stack, tenant.id)


async def test_the_listen_connection_reconnects_and_invalidates(
    stack: Stack, tmp_path: Path
) -> None:
    async with private_database(stack) as dsn, signin_sts(stack, tmp_path, dsn) as sts:
        keys = sts.app[AGENT_KEYS]
        tenant = await create_tenant(dsn, agents=1)
        assert len(await keys.for_tenant(tenant.id)) == 1
        epoch = keys.generation(tenant.id)[0]
        conn = await asyncpg.connect(dsn)
        try:
            ended = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = $1 AND datname = current_database()",
                LISTEN_APPLICATION_NAME,
            )
        finally:
            await conn.close()
        assert ended == 1
        await until(lambda: keys.stats["reconnects"] == 1, timeout_s=10)
        async with asyncio.timeout(10):
            await keys.listening.wait()
        assert keys.generation(tenant.id)[0] > epoch  # everything was invalidated
        loads = keys.stats["loads"]
        assert len(await keys.for_tenant(tenant.id)) == 1
        assert keys.stats["loads"] == loads + 1


async def test_an_unreachable_broker_does_not_stop_the_sts(stack: Stack, tmp_path: Path) -> None:
    async with private_database(stack) as dsn:
        tenant = await create_tenant(dsn, agents=1, users={"lee": ("Pw-1", Status.SUCCESS)})
        settings = signin_settings(stack, tmp_path, dsn).model_copy(
            update={"amqp_url": "amqp://nobody:nothing@127.0.0.1:1"}
        )
        server = TestServer(create_app(settings), port=settings.port)
        await server.start_server()
        async with TestClient(server) as client:
            admin = stack.demo.tenants[0]
            r = await client.post(
                f"/{admin.id}/oauth2/v2.0/token",
                data={
                    "grant_type": "password", "client_id": "pta-agent", "scope": "openid",
                    "username": admin.admin_username, "password": admin.admin_password,
                },
            )  # fmt: skip
            assert r.status == 200, await r.text()
            started = time.monotonic()
            r = await client.post(
                f"/{tenant.id}/oauth2/v2.0/token",
                data={
                    "grant_type": "password", "client_id": "pta-agent", "scope": "openid",
                    "username": tenant.username("lee"), "password": "Pw-1",
                },
            )  # fmt: skip
            assert r.status == 503 and (await r.json())["error_codes"] == [80001]
            assert time.monotonic() - started < 1
            assert server.app[PASSWORD_VALIDATOR] is not None
