"""A reply flood from one tenant's agent cannot fill the STS's log (issue 8, finding 5).

A new agent is registered and bootstrapped through the real CA, and with its own broker
credentials publishes thousands of replies the STS will not use (forged, late, and
undecodable) to every STS's reply queue. The STS log grows by a bounded number of lines
(`sts.reply_warnings`), and sign-ins keep working meanwhile.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import uuid
from pathlib import Path
from urllib.parse import quote

import aio_pika
import aiohttp
import pytest

from common import wire
from common.contracts import REPLY_EXCHANGE, tenant_vhost
from infra.stack import Stack
from sts.reply_warnings import TOTAL
from tests.e2e.support import (
    LogTail,
    bootstrap_agent,
    ca_admin_token,
    delete_agent,
    password_grant,
    register_agent,
    stack_doc,
    tenant_doc,
    user_password,
)

pytestmark = pytest.mark.stack

PER_QUEUE = 3000


async def _reply_queues(stack: Stack, tenant_id: str) -> list[str]:
    """The STS replicas' reply queues in the tenant's vhost."""
    vhost = quote(tenant_vhost(tenant_id), safe="")
    raw = f"{stack.demo.rabbitmq_admin_user}:{stack.demo.rabbitmq_admin_password}"
    headers = {"Authorization": "Basic " + base64.b64encode(raw.encode()).decode()}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.get(f"{stack.rabbitmq.management_url}/api/queues/{vhost}") as r:
            queues = await r.json()
    return sorted(q["name"] for q in queues if q["name"].startswith("sts."))


def _junk(n: int) -> aio_pika.Message:
    """Replies of every kind the STS drops: undecodable, late, forged."""
    if n % 3 == 0:
        return aio_pika.Message(b"{not a reply " + secrets.token_bytes(8).hex().encode())
    reply = wire.Reply(
        v=1,
        request_id=str(uuid.uuid4()),
        agent_id=str(uuid.uuid4()),  # a forger may name any agent
        kid=base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode(),
        status=wire.Status.SUCCESS,
        detail="",
        elapsed_ms=1.0,
        mac=base64.b64encode(secrets.token_bytes(32)).decode(),
    )
    # n % 3 == 1: the correlation id matches (a late reply); == 2: it differs (forged).
    correlation = reply.request_id if n % 3 == 1 else str(uuid.uuid4())
    return wire.reply_message(reply, correlation_id=correlation)


async def _flood(amqp_url: str, queues: list[str]) -> None:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=False)
        exchange = await channel.get_exchange(REPLY_EXCHANGE, ensure=False)
        for n in range(PER_QUEUE):
            for queue in queues:
                await exchange.publish(_junk(n), routing_key=queue)
    finally:
        await connection.close()


async def test_a_reply_flood_writes_a_bounded_number_of_log_lines(
    stack: Stack, tmp_path: Path
) -> None:
    contoso = tenant_doc(stack, "contoso.test")
    admin = contoso["admin"]
    token = await ca_admin_token(stack, admin["username"], admin["password"])
    agent = await register_agent(stack, token, tmp_path / "agent")
    try:
        amqp_url = await bootstrap_agent(stack, agent)
        sts_urls = stack_doc(stack)["sts_urls"]
        pattern = contoso["bulk_users"]["pattern"]
        users = [pattern.format(n=n) for n in range(871, 881)]
        for sts_url in sts_urls:  # each replica opens its link to the tenant's vhost
            answer = await password_grant(stack, users[0], user_password(stack, users[0]),
                                          sts_url=sts_url)  # fmt: skip
            assert answer.status == 200, answer.body
        queues = await _reply_queues(stack, contoso["id"])
        assert len(queues) == len(sts_urls), queues
        tails = [LogTail(stack.layout.logs_dir / name) for name in ("sts.log", "sts2.log")]

        # Users sign in while the flood runs: each gets its real answer.
        async with aiohttp.ClientSession() as http:
            _, *answers = await asyncio.gather(
                _flood(amqp_url, queues),
                *(password_grant(stack, u, user_password(stack, u), session=http) for u in users),
            )
        assert [a.status for a in answers] == [200] * len(users), [a.body for a in answers]

        # Then one sign-in on each STS: its reply queue is FIFO with one consumer, so a
        # genuine reply read after the flood means every flood message was handled.
        for sts_url in sts_urls:
            answer = await password_grant(stack, users[0], user_password(stack, users[0]),
                                          sts_url=sts_url)  # fmt: skip
            assert answer.status == 200, answer.body

        for tail in tails:
            lines = tail.new_lines()
            # The budget's lines, the sign-ins' own lines, and a few of anything else;
            # without the budget, one line per reply (PER_QUEUE lines at least).
            assert len(lines) <= TOTAL + 3 * len(users), (tail.path, len(lines))
            assert sum('"reply_' in line for line in lines) >= 10, tail.path
    finally:
        await delete_agent(stack, token, agent.agent_id)
