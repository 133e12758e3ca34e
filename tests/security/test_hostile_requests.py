"""Hostile requests against the running stack's agents and STS (issue: sign-in path).

Real sealed envelopes are published straight to a tenant queue, as a compromised cloud
component or a replaying attacker with broker access could. Published with the STS's own
broker credential (the trust boundary: docs/architecture.md, "Broker"), a replayed request
is answered at most once per agent and an expired one never; published by any other broker
user (the administrator, say), a copy reaches no agent's directory at all. slapd's own
failure counter (pwdFailureTime) proves that no bind happened for them. Hostile usernames
at the token endpoint get a clean OAuth error, never a success and never a server error.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import aio_pika
import asyncpg
import ldap3
import pytest
from cryptography.hazmat.primitives.serialization import load_der_public_key

from common import envelope, wire
from common.contracts import REPLY_EXCHANGE, tenant_queue
from infra import ldif
from infra.stack import Stack
from tests.broker import admin_url, sts_url, sts_user
from tests.e2e.support import password_grant

pytestmark = pytest.mark.stack


async def _recipients(stack: Stack, tenant_id: str) -> list[tuple[str, object]]:
    conn = await asyncpg.connect(stack.postgres_dsn)
    try:
        rows = await conn.fetch(
            "SELECT kid, spki FROM agents WHERE tenant_id = $1", uuid.UUID(tenant_id)
        )
    finally:
        await conn.close()
    return [(r["kid"], load_der_public_key(r["spki"])) for r in rows]


def _failures(stack: Stack, dn: str) -> int:
    conn = ldap3.Connection(
        ldap3.Server(stack.ldap_url, get_info=ldap3.NONE),
        stack.demo.ldap_admin_dn,
        stack.demo.ldap_admin_password,
        auto_bind=True,
    )
    try:
        conn.search(dn, "(objectClass=*)", search_scope=ldap3.BASE, attributes=["pwdFailureTime"])
        return len(conn.entries[0]["pwdFailureTime"].values)
    finally:
        conn.unbind()


async def test_replayed_and_expired_requests_are_never_bound(stack: Stack) -> None:
    tenant = stack.demo.tenants[0]
    uid = tenant.bulk_uid(860)
    dn = ldif.user_dn(tenant, uid)
    recipients = await _recipients(stack, tenant.id)
    assert len(recipients) == 3
    before = await asyncio.to_thread(_failures, stack, dn)

    conn = await aio_pika.connect(sts_url(stack, tenant.id))
    try:
        ch = await conn.channel()
        # Exclusive (gone with the connection), not auto-delete: it outlives each consumer.
        # Named as the STS's reply queues are: the only queues its broker user may declare.
        replies = await ch.declare_queue(f"sts.pytest.{uuid.uuid4().hex[:12]}", exclusive=True)
        exchange = await ch.get_exchange(REPLY_EXCHANGE)
        reply_key = replies.name
        await replies.bind(exchange, routing_key=reply_key)

        def sealed(expires_in_s: float) -> wire.RequestEnvelope:
            now = time.time()
            return envelope.seal(
                password="wrong-password-for-this-test",
                reply_key=envelope.new_reply_key(),
                recipients=recipients,  # type: ignore[arg-type]
                request_id=str(uuid.uuid4()),
                tenant_id=tenant.id,
                username=f"{uid}@{tenant.domain}",
                issued_at=now - 30,
                expires_at=now + expires_in_s,
            )

        async def publish(env: wire.RequestEnvelope) -> None:
            message = wire.request_message(
                env,
                reply_to=reply_key,
                correlation_id=env.request_id,
                expiration_s=10,
                publisher=sts_user(stack),
            )
            await ch.default_exchange.publish(message, routing_key=tenant_queue(tenant.id))

        async def next_reply(timeout_s: float) -> wire.Reply | None:
            try:
                async with asyncio.timeout(timeout_s):
                    async with replies.iterator() as it:
                        async for message in it:
                            await message.ack()
                            return wire.decode_reply(message.body)
            except TimeoutError:
                return None
            return None

        fresh = sealed(10)
        await publish(fresh)
        first = await next_reply(10)
        assert first is not None and first.request_id == fresh.request_id
        assert first.status is wire.Status.INVALID_CREDENTIALS

        # The same message six more times: each agent keeps its own replay cache
        # (docs/design.md: "request id seen within the deadline"), so an agent that has not
        # seen the id yet may answer it once; no agent answers it twice.
        for _ in range(6):
            await publish(fresh)
        expired = sealed(-5)
        await publish(expired)
        answers = [first]
        while (reply := await next_reply(3)) is not None:
            answers.append(reply)
        assert all(r.request_id == fresh.request_id for r in answers)  # never the expired
        by_agent = [r.agent_id for r in answers]
        assert len(by_agent) == len(set(by_agent)) <= 3, by_agent
    finally:
        await conn.close()

    after = await asyncio.to_thread(_failures, stack, dn)
    # The directory saw one failed bind per answer, not eight: the expired request and
    # every replay an agent recognised were never bound.
    assert after - before == len(answers), (before, after, len(answers))


def _dropped(stack: Stack, tenant_domain: str) -> int:
    """``request_not_from_sts`` lines in the logs of the tenant's running agents."""
    prefix = f"agent-{tenant_domain.split('.')[0]}-"
    total = 0
    for log in stack.layout.logs_dir.glob(f"{prefix}*.log"):
        total += sum(1 for line in log.read_text(errors="replace").splitlines()
                     if '"request_not_from_sts"' in line)  # fmt: skip
    return total


async def test_a_copy_published_by_another_broker_user_reaches_no_directory(
    stack: Stack,
) -> None:
    """Issue 8, finding 4: replay caches are per agent process, so a copy of a request
    re-published to the tenant queue would be validated once by each agent. Only the STS's
    broker user can publish a request that names it (AMQP user_id, checked by RabbitMQ);
    agents drop every other, before any decryption or bind."""
    tenant = stack.demo.tenants[0]
    uid = tenant.bulk_uid(861)
    dn = ldif.user_dn(tenant, uid)
    recipients = await _recipients(stack, tenant.id)
    before = await asyncio.to_thread(_failures, stack, dn)
    dropped_before = _dropped(stack, tenant.domain)

    sts = await aio_pika.connect(sts_url(stack, tenant.id))  # to see any reply
    admin = await aio_pika.connect(admin_url(stack, tenant.id))  # the copier
    try:
        ch = await sts.channel()
        replies = await ch.declare_queue(f"sts.pytest.{uuid.uuid4().hex[:12]}", exclusive=True)
        await replies.bind(await ch.get_exchange(REPLY_EXCHANGE), routing_key=replies.name)
        now = time.time()
        copy = envelope.seal(
            password="wrong-password-for-this-test",
            reply_key=envelope.new_reply_key(),
            recipients=recipients,  # type: ignore[arg-type]
            request_id=str(uuid.uuid4()),
            tenant_id=tenant.id,
            username=f"{uid}@{tenant.domain}",
            issued_at=now,
            expires_at=now + 10,
        )
        admin_channel = await admin.channel()
        body = wire.encode_request(copy)
        copies = [
            # No user_id at all, and the admin's own (the broker allows naming oneself).
            aio_pika.Message(body, reply_to=replies.name, correlation_id=copy.request_id),
            aio_pika.Message(
                body,
                reply_to=replies.name,
                correlation_id=copy.request_id,
                user_id=stack.demo.rabbitmq_admin_user,
            ),
        ] * 3  # more copies than the tenant has agents
        for message in copies:
            await admin_channel.default_exchange.publish(
                message, routing_key=tenant_queue(tenant.id)
            )
        async with asyncio.timeout(20):
            # Each agent logs the drop: remote processes, no event to await but their logs.
            while _dropped(stack, tenant.domain) - dropped_before < len(copies):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        assert await replies.get(fail=False) is None  # no agent answered a copy
    finally:
        await admin.close()
        await sts.close()
    after = await asyncio.to_thread(_failures, stack, dn)
    assert after == before, (before, after)  # and the directory saw no bind


HOSTILE_USERNAMES = [
    "*",
    "*@contoso.test",
    ")(uid=*",
    ")(uid=*)@contoso.test",
    "admin)(|(uid=*",
    "alice*@contoso.test",
    "a" * 10_240 + "@contoso.test",
    "alice\x00@contoso.test",
    "ålice@contoso.test",
    "alice@contoso.test\n",
    "",
]


@pytest.mark.parametrize("username", HOSTILE_USERNAMES, ids=lambda u: repr(u[:24]))
async def test_hostile_usernames_get_a_clean_refusal(stack: Stack, username: str) -> None:
    answer = await password_grant(stack, username, "whatever-password")
    assert answer.status == 400, answer.body
    assert answer.body["error"] in ("invalid_grant", "invalid_request"), answer.body
    assert answer.code in (50034, 50126, 90100, 900144, 80004), answer.body


async def test_a_10kb_password_is_refused_cleanly(stack: Stack) -> None:
    answer = await password_grant(stack, "bob@contoso.test", "p" * 10_240)
    assert answer.status == 400, answer.body
    assert answer.code in (50126, 90100), answer.body


async def test_an_empty_password_is_refused_without_an_agent(stack: Stack) -> None:
    answer = await password_grant(stack, "bob@contoso.test", "")
    assert answer.status == 400, answer.body
    assert answer.code in (50126, 900144), answer.body
