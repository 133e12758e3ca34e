"""Agents over mutual TLS against real PostgreSQL and RabbitMQ: bootstrap, broker isolation,
heartbeats, deletion and the CRLs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import aio_pika.abc
import aiohttp
import aiormq
import asyncpg
import pytest
from cryptography import x509

from ca.broker_admin import RabbitManagement
from common.contracts import REPLY_EXCHANGE, agent_broker_user, tenant_queue, tenant_vhost
from tests.broker import VHOST_REFUSED
from tests.support.ca_harness import (  # noqa: F401 - fixtures, used by name
    NOW,
    Agent,
    CaServer,
    TenantFactory,
    agent_session,
    amqp_url,
    assert_unchanged,
    bearer,
    ca_fixture,
    ca_pki_fixture,
    db_fixture,
    issue_cert,
    management,
    new_tenant_fixture,
    register,
    running_ca,
    snapshot,
)

pytestmark = pytest.mark.stack


async def _post(
    ca: CaServer, agent: Agent | tuple[Path, Path], path: str, body: Any = None
) -> tuple[int, Any]:
    cert_file, key_file = (agent.cert_file, agent.key_file) if isinstance(agent, Agent) else agent
    async with agent_session(ca, cert_file, key_file) as http:
        method = "GET" if path == "/agents/self" else "POST"
        async with http.request(method, f"{ca.url}{path}", json=body) as resp:
            return resp.status, await resp.json()


async def _bootstrap(ca: CaServer, agent: Agent) -> dict[str, Any]:
    status, answer = await _post(ca, agent, "/agents/bootstrap", {})
    assert status == 200, answer
    return dict(answer)


async def _ignore(message: aio_pika.abc.AbstractIncomingMessage) -> None:
    await message.reject(requeue=True)


# -- bootstrap and the broker -------------------------------------------------------------


async def test_bootstrap_gives_credentials_for_the_own_tenant_only(
    ca: CaServer, new_tenant: TenantFactory, db: asyncpg.Connection, tmp_path: Path
) -> None:
    tenant, other = await new_tenant(), await new_tenant()
    agent = await register(ca, tenant, tmp_path / "a")
    await register(ca, other, tmp_path / "b")  # declares the other tenant's queue

    before = dt.datetime.now(dt.UTC)
    answer = await _bootstrap(ca, agent)
    assert answer["amqp_url"] == ca.stack.rabbitmq.public_amqp_url
    assert answer["vhost"] == tenant_vhost(tenant)
    assert answer["publisher"] == ca.settings.sts_broker_user
    assert answer["username"] == agent_broker_user(agent.agent_id)
    assert answer["queue"] == tenant_queue(tenant)
    assert answer["reply_exchange"] == REPLY_EXCHANGE
    assert (answer["agent_id"], answer["tenant_id"]) == (agent.agent_id, tenant)
    assert answer["heartbeat_interval_s"] == ca.settings.heartbeat_interval_s
    assert len(answer["access_key"]) == 43  # 32 random bytes, URL-safe base64
    expires_at = dt.datetime.fromisoformat(answer["expires_at"])
    assert expires_at.utcoffset() == dt.timedelta(0)
    lifetime = dt.timedelta(seconds=ca.settings.access_key_lifetime_s)
    assert before + lifetime <= expires_at <= dt.datetime.now(dt.UTC) + lifetime
    row = await db.fetchrow(
        "SELECT broker_user, last_bootstrap_at FROM agents WHERE id = $1", uuid.UUID(agent.agent_id)
    )
    assert row is not None and row["broker_user"] == answer["username"]
    assert row["last_bootstrap_at"] is not None

    status, user = await management(ca, "GET", f"/api/users/{answer['username']}")
    assert status == 200 and user["tags"] in ("", [])

    connection = await aio_pika.connect(amqp_url(ca.stack, answer))
    try:
        own = await connection.channel()
        queue = await own.get_queue(answer["queue"], ensure=False)
        await queue.consume(_ignore)  # allowed: its own tenant's queue
        exchange = await own.get_exchange(REPLY_EXCHANGE, ensure=False)
        await exchange.publish(aio_pika.Message(b"{}"), routing_key="nobody")  # allowed

        other_channel = await connection.channel()
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            other_queue = await other_channel.get_queue(tenant_queue(other), ensure=False)
            await other_queue.consume(_ignore)
        declare_channel = await connection.channel()
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await declare_channel.declare_queue(f"agent-made-{uuid.uuid4()}", auto_delete=True)
        exchange_channel = await connection.channel()
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await exchange_channel.declare_exchange(f"agent-made-{uuid.uuid4()}")
        publish_channel = await connection.channel()
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            # The default exchange routes to any queue: not writable for an agent.
            await publish_channel.default_exchange.publish(
                aio_pika.Message(b"{}"), routing_key=tenant_queue(other)
            )
    finally:
        await connection.close()


async def test_an_agent_learns_nothing_about_another_tenants_queue(
    ca: CaServer, new_tenant: TenantFactory, tmp_path: Path
) -> None:
    """Issue 8, finding 6: RabbitMQ checks no permission on a passive declare, so in a
    shared vhost an agent could read another tenant's queue (existence, backlog,
    consumers). Each tenant has its own vhost now."""
    tenant, other = await new_tenant(), await new_tenant()
    agent = await register(ca, tenant, tmp_path / "a")
    other_agent = await register(ca, other, tmp_path / "b")
    answer = await _bootstrap(ca, agent)
    other_answer = await _bootstrap(ca, other_agent)
    other_live = await aio_pika.connect(amqp_url(ca.stack, other_answer))
    connection = await aio_pika.connect(amqp_url(ca.stack, answer))
    try:
        # The other tenant's queue has a consumer: nothing of it shows.
        other_channel = await other_live.channel()
        other_queue = await other_channel.get_queue(tenant_queue(other), ensure=False)
        await other_queue.consume(_ignore)
        # Its name in the agent's own vhost: not found, exactly as for a tenant that
        # does not exist, so not even the tenant id's existence leaks.
        for name in (tenant_queue(other), tenant_queue(str(uuid.uuid4()))):
            probe = await connection.channel()
            with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
                await probe.declare_queue(name, passive=True)
        # The other tenant's vhost: the connection itself is refused.
        with pytest.raises(VHOST_REFUSED, match=r"Connection\.Close"):
            await aio_pika.connect(amqp_url(ca.stack, {**answer, "vhost": other_answer["vhost"]}))
        assert answer["vhost"] != other_answer["vhost"]
    finally:
        await connection.close()
        await other_live.close()


async def test_a_second_bootstrap_rotates_the_key(
    ca: CaServer, new_tenant: TenantFactory, tmp_path: Path
) -> None:
    tenant = await new_tenant()
    agent = await register(ca, tenant, tmp_path)
    first = await _bootstrap(ca, agent)
    second = await _bootstrap(ca, agent)
    assert first["username"] == second["username"]
    assert first["access_key"] != second["access_key"]
    with pytest.raises(aiormq.exceptions.AMQPConnectionError):
        await aio_pika.connect(amqp_url(ca.stack, first))
    connection = await aio_pika.connect(amqp_url(ca.stack, second))
    await connection.close()


async def test_bootstrap_is_refused_when_the_broker_is_down(
    ca: CaServer, new_tenant: TenantFactory, db: asyncpg.Connection, tmp_path: Path
) -> None:
    tenant = await new_tenant()
    agent = await register(ca, tenant, tmp_path)
    async with aiohttp.ClientSession() as session:
        # A second CA replica whose broker does not answer (nothing listens on port 9).
        dead = RabbitManagement(
            base_url="http://127.0.0.1:9", user="x", password="y", session=session, timeout_s=2
        )
        async with running_ca(ca.stack, ca.pki, broker=dead) as replica:
            before = await snapshot(db)
            status, answer = await _post(replica, agent, "/agents/bootstrap", {})
    assert (status, answer["error"]) == (503, "broker_unavailable")
    assert answer["message"] == "The message broker could not be reached; try again shortly."
    await assert_unchanged(db, before)


# -- certificates that must not work ---------------------------------------------------------


async def _refused_handshake(ca: CaServer, cert_file: Path, key_file: Path) -> None:
    with pytest.raises(aiohttp.ClientError):
        await _post(ca, (cert_file, key_file), "/agents/bootstrap", {})


async def test_a_certificate_of_another_ca_fails_the_handshake(
    ca: CaServer, new_tenant: TenantFactory, db: asyncpg.Connection, tmp_path: Path
) -> None:
    tenant = await new_tenant()
    agent = await register(ca, tenant, tmp_path / "real")
    # Same subject, same agent id, same CA name: only the signature differs.
    cert_file, key_file, _ = issue_cert(
        ca.pki.other_ca_cert, ca.pki.other_ca_key, tmp_path / "forged",
        tenant_id=tenant, agent_id=agent.agent_id,
    )  # fmt: skip
    before = await snapshot(db)
    await _refused_handshake(ca, cert_file, key_file)
    await assert_unchanged(db, before)


async def test_an_expired_certificate_fails_the_handshake(
    ca: CaServer, new_tenant: TenantFactory, db: asyncpg.Connection, tmp_path: Path
) -> None:
    tenant = await new_tenant()
    cert_file, key_file, _ = issue_cert(
        ca.pki.pta_ca_cert, ca.pki.pta_ca_key, tmp_path,
        tenant_id=tenant, now=NOW - dt.timedelta(days=10), lifetime_days=1,
    )  # fmt: skip
    before = await snapshot(db)
    await _refused_handshake(ca, cert_file, key_file)
    await assert_unchanged(db, before)


async def test_no_client_certificate_is_refused(ca: CaServer) -> None:
    for method, path in (
        ("POST", "/agents/bootstrap"),
        ("POST", "/agents/heartbeat"),
        ("GET", "/agents/self"),
    ):
        async with ca.http.request(method, f"{ca.url}{path}", json={}) as resp:
            answer = await resp.json()
            assert (resp.status, answer["error"]) == (401, "client_certificate_required")


async def test_a_revoked_certificate_is_refused(
    ca: CaServer, new_tenant: TenantFactory, db: asyncpg.Connection, tmp_path: Path
) -> None:
    tenant = await new_tenant()
    agent = await register(ca, tenant, tmp_path)
    await db.execute(
        "INSERT INTO revocations (serial, issuer, tenant_id, agent_id) VALUES ($1, 'pta', $2, $3)",
        format(agent.certificate.serial_number, "x"),
        tenant,
        agent.agent_id,
    )
    before = await snapshot(db)
    for path in ("/agents/bootstrap", "/agents/heartbeat", "/agents/self"):
        body = {"version": "1", "status": "ok"} if path.endswith("heartbeat") else {}
        status, answer = await _post(ca, agent, path, body)
        assert (status, answer["error"]) == (401, "certificate_revoked"), path
    await assert_unchanged(db, before)


async def test_a_certificate_of_a_removed_agent_is_refused(
    ca: CaServer, new_tenant: TenantFactory, db: asyncpg.Connection, tmp_path: Path
) -> None:
    tenant = await new_tenant()
    agent = await register(ca, tenant, tmp_path)
    await db.execute("DELETE FROM agents WHERE id = $1", uuid.UUID(agent.agent_id))
    before = await snapshot(db)
    status, answer = await _post(ca, agent, "/agents/bootstrap", {})
    assert (status, answer["error"]) == (401, "agent_not_found")
    await assert_unchanged(db, before)
    status, _ = await management(ca, "GET", f"/api/users/{agent_broker_user(agent.agent_id)}")
    assert status == 404  # no broker user was created for it


async def test_a_superseded_certificate_is_refused(
    ca: CaServer, new_tenant: TenantFactory, db: asyncpg.Connection, tmp_path: Path
) -> None:
    tenant = await new_tenant()
    agent = await register(ca, tenant, tmp_path)
    # As if the agent had renewed: the row now names another serial.
    await db.execute(
        "UPDATE agents SET cert_serial = 'abcdef' WHERE id = $1", uuid.UUID(agent.agent_id)
    )
    before = await snapshot(db)
    status, answer = await _post(ca, agent, "/agents/bootstrap", {})
    assert (status, answer["error"]) == (401, "certificate_superseded")
    await assert_unchanged(db, before)


async def test_a_certificate_naming_another_tenant_is_refused(
    ca: CaServer, new_tenant: TenantFactory, db: asyncpg.Connection, tmp_path: Path
) -> None:
    """Our CA's signature over (tenant B, agent of A) still does not reach A's agent."""
    tenant, other = await new_tenant(), await new_tenant()
    agent = await register(ca, tenant, tmp_path / "a")
    cert_file, key_file, _ = issue_cert(
        ca.pki.pta_ca_cert, ca.pki.pta_ca_key, tmp_path / "b",
        tenant_id=other, agent_id=agent.agent_id,
    )  # fmt: skip
    before = await snapshot(db)
    status, answer = await _post(ca, (cert_file, key_file), "/agents/bootstrap", {})
    assert (status, answer["error"]) == (401, "agent_not_found")
    await assert_unchanged(db, before)


# -- heartbeat and views -----------------------------------------------------------------------


async def test_heartbeat_records_and_answers_renewal(
    ca: CaServer, new_tenant: TenantFactory, db: asyncpg.Connection, tmp_path: Path
) -> None:
    tenant = await new_tenant()
    agent = await register(ca, tenant, tmp_path)
    status, view = await _post(ca, agent, "/agents/self")
    assert status == 200
    assert view["status"] == "inactive" and view["last_heartbeat_at"] is None

    body = {"version": "1.2.3", "status": "healthy", "detail": "directory reachable"}
    status, answer = await _post(ca, agent, "/agents/heartbeat", body)
    assert status == 200
    assert answer == {"renew": False, "heartbeat_interval_s": ca.settings.heartbeat_interval_s}
    row = await db.fetchrow("SELECT * FROM agents WHERE id = $1", uuid.UUID(agent.agent_id))
    assert row is not None and row["last_heartbeat_at"] is not None
    assert dt.datetime.now(dt.UTC) - row["last_heartbeat_at"] < dt.timedelta(seconds=30)
    assert (row["version"], row["reported_status"], row["status_detail"]) == (
        "1.2.3",
        "healthy",
        "directory reachable",
    )

    status, view = await _post(ca, agent, "/agents/self")
    assert status == 200
    assert (view["agent_id"], view["tenant_id"], view["status"]) == (
        agent.agent_id,
        tenant,
        "active",
    )
    assert view["version"] == "1.2.3"

    # 151 days later the certificate is within 30 days of expiry: renew.
    ca.clock.offset = dt.timedelta(days=151)
    try:
        status, answer = await _post(ca, agent, "/agents/heartbeat", body)
        assert (status, answer["renew"]) == (200, True)
    finally:
        ca.clock.offset = dt.timedelta()


async def test_heartbeat_refuses_bad_bodies(
    ca: CaServer, new_tenant: TenantFactory, db: asyncpg.Connection, tmp_path: Path
) -> None:
    tenant = await new_tenant()
    agent = await register(ca, tenant, tmp_path)
    before = await snapshot(db)
    for body in (
        {"version": "1", "status": "Bad Status"},
        {"version": "1", "status": "ok", "detail": "x" * 257},
        {"version": "1", "status": "ok", "detail": "line\r\nforged"},
        {"status": "ok"},
    ):
        status, answer = await _post(ca, agent, "/agents/heartbeat", body)
        assert (status, answer["error"]) == (400, "invalid_request"), body
    await assert_unchanged(db, before)


async def test_admins_list_only_their_tenant(
    ca: CaServer, new_tenant: TenantFactory, tmp_path: Path
) -> None:
    tenant, other = await new_tenant(), await new_tenant()
    mine = [await register(ca, tenant, tmp_path / str(i), host=f"dc{i}") for i in range(2)]
    await register(ca, other, tmp_path / "other")
    async with ca.http.get(f"{ca.url}/agents", headers=bearer(ca.admin_token(tenant))) as resp:
        assert resp.status == 200
        listed = (await resp.json())["agents"]
    assert sorted(a["agent_id"] for a in listed) == sorted(a.agent_id for a in mine)
    assert all(a["tenant_id"] == tenant and a["status"] == "inactive" for a in listed)

    async with ca.http.get(
        f"{ca.url}/agents", headers=bearer(ca.admin_token(tenant, roles=["reader"]))
    ) as resp:
        assert (resp.status, (await resp.json())["error"]) == (403, "insufficient_role")


# -- deletion and CRLs ------------------------------------------------------------------------


async def _crl(ca: CaServer, name: str) -> x509.CertificateRevocationList:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{ca.crl_url}/{name}") as resp:
            assert resp.status == 200
            assert resp.content_type == "application/pkix-crl"
            return x509.load_der_x509_crl(await resp.read())


async def test_delete_revokes_and_removes_the_broker_user(
    ca: CaServer, new_tenant: TenantFactory, db: asyncpg.Connection, tmp_path: Path
) -> None:
    tenant = await new_tenant()
    agent = await register(ca, tenant, tmp_path)
    answer = await _bootstrap(ca, agent)
    live = await aio_pika.connect(amqp_url(ca.stack, answer))
    closed: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    def on_close(_connection: object, reason: BaseException | None = None) -> None:
        if not closed.done():
            closed.set_result(reason)

    live.close_callbacks.add(on_close)
    serial = agent.certificate.serial_number
    crl = await _crl(ca, "pta.crl")  # warm the cache: the delete must drop it
    assert crl.get_revoked_certificate_by_serial_number(serial) is None

    async with ca.http.delete(
        f"{ca.url}/agents/{agent.agent_id}", headers=bearer(ca.admin_token(tenant))
    ) as resp:
        assert resp.status == 204

    # Deleting the user makes the broker close the agent's live connection at once.
    async with asyncio.timeout(10):
        reason = await closed
    assert "CONNECTION_FORCED" in str(reason)
    number_before = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    crl = await _crl(ca, "pta.crl")
    number_after = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number_after > number_before
    assert crl.is_signature_valid(ca.pki.pta_ca_cert.public_key())  # type: ignore[arg-type]
    assert crl.issuer == ca.pki.pta_ca_cert.subject
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    status, _ = await management(ca, "GET", f"/api/users/{answer['username']}")
    assert status == 404
    with pytest.raises(aiormq.exceptions.AMQPConnectionError):
        await aio_pika.connect(amqp_url(ca.stack, answer))
    assert (
        await db.fetchval("SELECT count(*) FROM agents WHERE id = $1", uuid.UUID(agent.agent_id))
        == 0
    )
    revocation = await db.fetchrow(
        "SELECT * FROM revocations WHERE issuer = 'pta' AND serial = $1", format(serial, "x")
    )
    assert revocation is not None and str(revocation["agent_id"]) == agent.agent_id

    status, refused = await _post(ca, agent, "/agents/bootstrap", {})
    assert (status, refused["error"]) == (401, "certificate_revoked")


async def test_delete_never_reveals_other_tenants_agents(
    ca: CaServer, new_tenant: TenantFactory, db: asyncpg.Connection, tmp_path: Path
) -> None:
    tenant, other = await new_tenant(), await new_tenant()
    agent = await register(ca, tenant, tmp_path)
    before = await snapshot(db)
    for agent_id, token in (
        (agent.agent_id, ca.admin_token(other)),  # exists, in another tenant
        (str(uuid.uuid4()), ca.admin_token(tenant)),  # does not exist
        ("not-a-uuid", ca.admin_token(tenant)),
    ):
        async with ca.http.delete(f"{ca.url}/agents/{agent_id}", headers=bearer(token)) as resp:
            answer = await resp.json()
            assert (resp.status, answer["error"]) == (404, "agent_not_found")
            assert answer["message"] == "No such agent in this tenant."
    async with ca.http.delete(
        f"{ca.url}/agents/{agent.agent_id}", headers=bearer(ca.admin_token(tenant, roles=[]))
    ) as resp:
        assert (resp.status, (await resp.json())["error"]) == (403, "insufficient_role")
    await assert_unchanged(db, before)


async def test_delete_changes_nothing_when_the_broker_is_down(
    ca: CaServer, new_tenant: TenantFactory, db: asyncpg.Connection, tmp_path: Path
) -> None:
    tenant = await new_tenant()
    agent = await register(ca, tenant, tmp_path)
    async with aiohttp.ClientSession() as session:
        dead = RabbitManagement(
            base_url="http://127.0.0.1:9", user="x", password="y", session=session, timeout_s=2
        )
        async with running_ca(ca.stack, ca.pki, broker=dead) as replica:
            before = await snapshot(db)
            async with replica.http.delete(
                f"{replica.url}/agents/{agent.agent_id}", headers=bearer(ca.admin_token(tenant))
            ) as resp:
                assert (resp.status, (await resp.json())["error"]) == (503, "broker_unavailable")
    await assert_unchanged(db, before)  # not revoked, not deleted: the admin retries
    status, _ = await _post(ca, agent, "/agents/self")
    assert status == 200


async def test_service_crl_is_signed_by_the_service_ca(ca: CaServer) -> None:
    crl = await _crl(ca, "service.crl")
    service_ca = x509.load_pem_x509_certificate(ca.pki.service_ca.read_bytes())
    assert crl.issuer == service_ca.subject
    assert crl.is_signature_valid(service_ca.public_key())  # type: ignore[arg-type]


async def test_the_crl_listener_serves_nothing_else(ca: CaServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{ca.crl_url}/agents/register", json={}) as resp:
            assert resp.status in (404, 405)


async def test_concurrent_bootstraps_leave_one_working_key(
    ca: CaServer, new_tenant: TenantFactory, tmp_path: Path
) -> None:
    tenant = await new_tenant()
    agent = await register(ca, tenant, tmp_path)
    answers = await asyncio.gather(*(_bootstrap(ca, agent) for _ in range(4)))
    working = 0
    for answer in answers:
        try:
            connection = await aio_pika.connect(amqp_url(ca.stack, answer))
        except aiormq.exceptions.AMQPConnectionError:
            continue
        working += 1
        await connection.close()
    assert working == 1
