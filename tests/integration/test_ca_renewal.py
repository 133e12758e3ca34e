"""Certificate renewal, tenant leases and expiry against real PostgreSQL and RabbitMQ
(ca.renewal, ca.leases; docs/architecture.md "Certificate renewal").
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ca.renewal import sweep_expired
from common import pki
from common.contracts import agent_broker_user
from tests.support.ca_harness import (  # noqa: F401 - fixtures, used by name
    Agent,
    CaServer,
    TenantFactory,
    agent_session,
    assert_unchanged,
    ca_fixture,
    ca_pki_fixture,
    db_fixture,
    issue_cert,
    new_csr_pem,
    new_tenant_fixture,
    register,
    snapshot,
)

pytestmark = pytest.mark.stack


async def _call(
    ca: CaServer, cert_file: Path, key_file: Path, path: str, body: Any = None
) -> tuple[int, Any, dict[str, str]]:
    async with (
        agent_session(ca, cert_file, key_file) as http,
        http.post(f"{ca.url}{path}", json=body if body is not None else {}) as resp,
    ):
        return resp.status, await resp.json(), dict(resp.headers)


async def _renew(ca: CaServer, agent: Agent, csr: str) -> tuple[int, Any, dict[str, str]]:
    return await _call(ca, agent.cert_file, agent.key_file, "/agents/renew", {"csr": csr})


async def _register_due(ca: CaServer, tenant: str, folder: Path) -> Agent:
    """A registered agent whose recorded expiry is inside the renewal window (the CA
    renews only there; the certificate itself is unchanged)."""
    agent = await register(ca, tenant, folder)
    conn = await asyncpg.connect(ca.settings.postgres_dsn.get_secret_value())
    try:
        await conn.execute(
            "UPDATE agents SET cert_not_after = now() + interval '1 day' WHERE id = $1",
            uuid.UUID(agent.agent_id),
        )
    finally:
        await conn.close()
    return agent


def _renewed(agent: Agent, folder: Path, key: rsa.RSAPrivateKey, answer: dict[str, Any]) -> Agent:
    folder.mkdir(parents=True, exist_ok=True)
    key_file = folder / "agent.key"
    pki.write_private_key(key_file, key)
    cert_file = folder / "agent.crt"
    cert_file.write_text(answer["certificate"])
    return Agent(agent.agent_id, agent.tenant_id, cert_file, key_file, answer)


async def _tables(db: asyncpg.Connection, tenant: str) -> tuple[Any, ...]:
    """Everything a renewal may change, for one tenant."""
    leases = await db.fetch("SELECT * FROM leases WHERE tenant_id = $1", tenant)
    renewals = await db.fetch(
        "SELECT * FROM agent_renewals WHERE tenant_id = $1 ORDER BY new_serial", tenant
    )
    return (await snapshot(db), [tuple(r) for r in leases], [tuple(r) for r in renewals])


def _serial(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


# -- the happy path ----------------------------------------------------------------------------


async def test_renewal_replaces_key_and_serial_and_supersedes_the_old_certificate(
    ca: CaServer, new_tenant: TenantFactory, db: asyncpg.Connection, tmp_path: Path
) -> None:
    tenant = await new_tenant()
    agent = await _register_due(ca, tenant, tmp_path / "old")
    old_serial, old_kid = _serial(agent.certificate), agent.answer["kid"]
    notified: asyncio.Queue[str] = asyncio.Queue()

    def on_notify(*args: Any) -> None:
        notified.put_nowait(args[3])

    await db.add_listener("pta_agents", on_notify)
    try:
        key, csr = new_csr_pem()
        started = time.perf_counter()
        status, answer, _ = await _renew(ca, agent, csr)
        elapsed_ms = (time.perf_counter() - started) * 1000
        assert status == 200, answer
        # The STS's key cache is told at once: the tenant's keys changed.
        assert await asyncio.wait_for(notified.get(), 5) == tenant
    finally:
        await db.remove_listener("pta_agents", on_notify)
    print(f"renewal request took {elapsed_ms:.1f} ms")

    new = _renewed(agent, tmp_path / "new", key, answer)
    cert = new.certificate
    assert answer["serial"] == _serial(cert) != old_serial
    assert answer["kid"] == pki.spki_sha256_kid(key.public_key()) != old_kid
    identity = pki.agent_identity(cert)
    assert (identity.tenant_id, identity.agent_id) == (tenant, agent.agent_id)
    row = await db.fetchrow(
        "SELECT kid, cert_serial, spki FROM agents WHERE id = $1", agent.agent_id
    )
    assert (row["kid"], row["cert_serial"]) == (answer["kid"], answer["serial"])
    assert bytes(row["spki"]) == pki.spki_der(key.public_key())
    reason = await db.fetchval(
        "SELECT reason FROM revocations WHERE issuer = 'pta' AND serial = $1", old_serial
    )
    assert reason == "superseded"
    assert await db.fetchval("SELECT holder FROM leases WHERE tenant_id = $1", tenant) == (
        agent.agent_id
    )

    assert await _renewal_shown(ca, new, tenant) == ("in_progress", "in_progress")

    # The old certificate is refused everywhere; the new one works, and its first
    # bootstrap completes the renewal and frees the tenant's lease.
    status, answer, _ = await _call(ca, agent.cert_file, agent.key_file, "/agents/bootstrap")
    assert (status, answer["error"]) == (401, "certificate_superseded")
    status, answer, _ = await _call(ca, new.cert_file, new.key_file, "/agents/bootstrap")
    assert status == 200, answer
    assert await db.fetchval("SELECT count(*) FROM leases WHERE tenant_id = $1", tenant) == 0
    completed = await db.fetchval(
        "SELECT completed_at FROM agent_renewals WHERE new_serial = $1", _serial(cert)
    )
    assert completed is not None
    assert await _renewal_shown(ca, new, tenant) == ("not_due", "not_due")
    ca.clock.offset = dt.timedelta(days=ca.settings.agent_cert_lifetime_days - 10)
    try:
        assert await _renewal_shown(ca, new, tenant) == ("due", "due")
    finally:
        ca.clock.offset = dt.timedelta()
    # The old serial is on the PTA CRL.
    async with ca.http.get(f"{ca.crl_url}/pta.crl") as resp:
        crl = x509.load_der_x509_crl(await resp.read())
    assert crl.get_revoked_certificate_by_serial_number(agent.certificate.serial_number)


async def test_a_renewal_asked_again_with_the_same_key_gets_the_same_certificate(
    ca: CaServer, new_tenant: TenantFactory, db: asyncpg.Connection, tmp_path: Path
) -> None:
    """The agent crashed before storing its new certificate: asking again with the old
    certificate and the same CSR answers the issued certificate, nothing changes."""
    tenant = await new_tenant()
    agent = await _register_due(ca, tenant, tmp_path)
    _, csr = new_csr_pem()
    status, first, _ = await _renew(ca, agent, csr)
    assert status == 200, first
    before = await _tables(db, tenant)
    status, again, _ = await _renew(ca, agent, csr)
    assert status == 200, again
    assert again == first
    assert await _tables(db, tenant) == before
    # A different key with the old certificate is refused: it is superseded.
    _, other = new_csr_pem()
    status, answer, _ = await _renew(ca, agent, other)
    assert (status, answer["error"]) == (401, "certificate_superseded")
    assert await _tables(db, tenant) == before


async def _renewal_shown(ca: CaServer, agent: Agent, tenant: str) -> tuple[str, str]:
    """The ``renewal`` field of GET /agents/self (mTLS) and of GET /agents (admin)."""
    async with (
        agent_session(ca, agent.cert_file, agent.key_file) as http,
        http.get(f"{ca.url}/agents/self") as resp,
    ):
        own = (await resp.json())["renewal"]
    async with ca.http.get(
        f"{ca.url}/agents", headers={"Authorization": f"Bearer {ca.admin_token(tenant)}"}
    ) as resp:
        [listed] = [a for a in (await resp.json())["agents"] if a["agent_id"] == agent.agent_id]
    return own, listed["renewal"]


# -- bad input: each refused with its code, nothing changed -------------------------------------


def _csr_with_bad_signature() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = bytearray(pki.new_agent_csr(key).public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # inside the signature: no longer made by the CSR's key
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()


def _ec_csr() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.parametrize(
    ("make_csr", "code"),
    [
        (_csr_with_bad_signature, "csr_rejected"),
        (lambda: new_csr_pem(1024)[1], "csr_rejected"),
        (lambda: new_csr_pem(3072)[1], "csr_rejected"),
        (_ec_csr, "csr_rejected"),
        (lambda: "not a CSR", "csr_rejected"),
    ],
    ids=["signed-by-another-key", "rsa-1024", "rsa-3072", "ec-p256", "garbage"],
)
async def test_bad_csrs_are_refused(
    ca: CaServer,
    new_tenant: TenantFactory,
    db: asyncpg.Connection,
    tmp_path: Path,
    make_csr: Any,
    code: str,
) -> None:
    tenant = await new_tenant()
    agent = await _register_due(ca, tenant, tmp_path)
    before = await _tables(db, tenant)
    status, answer, _ = await _renew(ca, agent, make_csr())
    assert (status, answer["error"]) == (400, code), answer
    assert await _tables(db, tenant) == before


async def test_a_certificate_not_due_is_not_renewed(
    ca: CaServer, new_tenant: TenantFactory, db: asyncpg.Connection, tmp_path: Path
) -> None:
    # Renewal opens renew_before_days before expiry: before that an agent (or a stolen
    # key) cannot loop through renewals, each a revoked serial and a key reload everywhere.
    tenant = await new_tenant()
    agent = await register(ca, tenant, tmp_path / "agent")
    before = await _tables(db, tenant)
    status, answer, _ = await _renew(ca, agent, new_csr_pem()[1])
    assert (status, answer["error"]) == (409, "renewal_not_due")
    assert await _tables(db, tenant) == before


async def test_a_key_used_before_is_refused_as_a_replay(
    ca: CaServer, new_tenant: TenantFactory, db: asyncpg.Connection, tmp_path: Path
) -> None:
    tenant = await new_tenant()
    agent = await _register_due(ca, tenant, tmp_path / "old")
    key, csr = new_csr_pem()
    status, answer, _ = await _renew(ca, agent, csr)
    assert status == 200, answer
    new = _renewed(agent, tmp_path / "new", key, answer)
    before = await _tables(db, tenant)
    # The same request again, now with the new certificate: the key is taken.
    status, answer, _ = await _renew(ca, new, csr)
    assert (status, answer["error"]) == (409, "renewal_replayed"), answer
    # The old key again (a CSR for a key this agent had before).
    old_key = pki.read_private_key(agent.key_file)
    assert isinstance(old_key, rsa.RSAPrivateKey)
    old_csr = pki.csr_pem(pki.new_agent_csr(old_key)).decode()
    status, answer, _ = await _renew(ca, new, old_csr)
    assert (status, answer["error"]) == (409, "renewal_replayed"), answer
    assert await _tables(db, tenant) == before


async def test_expired_revoked_and_foreign_certificates_are_refused(
    ca: CaServer, new_tenant: TenantFactory, db: asyncpg.Connection, tmp_path: Path
) -> None:
    tenant = await new_tenant()
    agent = await _register_due(ca, tenant, tmp_path / "a")
    _, csr = new_csr_pem()
    before = await _tables(db, tenant)

    # Expired (the CA's clock past not_after; the handshake uses the real clock).
    ca.clock.offset = dt.timedelta(days=ca.settings.agent_cert_lifetime_days + 1)
    try:
        status, answer, _ = await _renew(ca, agent, csr)
    finally:
        ca.clock.offset = dt.timedelta()
    assert (status, answer["error"]) == (401, "client_certificate_required"), answer
    assert "expired" in answer["message"]
    assert await _tables(db, tenant) == before

    # Foreign CA: refused in the TLS handshake, before any handler.
    cert_file, key_file, _ = issue_cert(
        ca.pki.other_ca_cert, ca.pki.other_ca_key, tmp_path / "foreign", tenant_id=tenant,
        agent_id=agent.agent_id,
    )  # fmt: skip
    with pytest.raises(aiohttp.ClientError):
        await _call(ca, cert_file, key_file, "/agents/renew", {"csr": csr})
    assert await _tables(db, tenant) == before

    # Revoked: an admin deleted the agent.
    async with ca.http.delete(
        f"{ca.url}/agents/{agent.agent_id}",
        headers={"Authorization": f"Bearer {ca.admin_token(tenant)}"},
    ) as resp:
        assert resp.status == 204
    before = await _tables(db, tenant)
    status, answer, _ = await _renew(ca, agent, csr)
    assert (status, answer["error"]) == (401, "certificate_revoked"), answer
    assert await _tables(db, tenant) == before


# -- one at a time per tenant ---------------------------------------------------------------------


async def test_renewals_of_a_tenant_are_serialised_and_a_dead_lease_expires(
    ca: CaServer, new_tenant: TenantFactory, db: asyncpg.Connection, tmp_path: Path
) -> None:
    tenant, other_tenant = await new_tenant(), await new_tenant()
    first = await _register_due(ca, tenant, tmp_path / "a")
    second = await _register_due(ca, tenant, tmp_path / "b")
    elsewhere = await _register_due(ca, other_tenant, tmp_path / "c")

    # Two agents of one tenant ask at once: exactly one renews, the other is told when
    # to come back.
    (_, csr_a), (_, csr_b) = new_csr_pem(), new_csr_pem()
    results = await asyncio.gather(_renew(ca, first, csr_a), _renew(ca, second, csr_b))
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200, 409], results
    winner, loser = (0, 1) if results[0][0] == 200 else (1, 0)
    _, refusal, headers = results[loser]
    assert refusal["error"] == "renewal_in_progress"
    assert 0 < refusal["retry_after_s"] <= ca.settings.renewal_lease_s
    assert headers["Retry-After"] == str(refusal["retry_after_s"])
    loser_agent = (first, second)[loser]
    loser_row = await db.fetchrow(
        "SELECT kid, cert_serial FROM agents WHERE id = $1", loser_agent.agent_id
    )
    assert loser_row["cert_serial"] == _serial(loser_agent.certificate)

    # Another tenant is not held back.
    status, answer, _ = await _renew(ca, elsewhere, new_csr_pem()[1])
    assert status == 200, answer

    # The winner dies before confirming: the lease frees itself after renewal_lease_s.
    before = await _tables(db, tenant)
    status, answer, _ = await _renew(ca, loser_agent, new_csr_pem()[1])
    assert (status, answer["error"]) == (409, "renewal_in_progress")
    assert await _tables(db, tenant) == before
    ca.clock.offset = dt.timedelta(seconds=ca.settings.renewal_lease_s + 1)
    try:
        status, answer, _ = await _renew(ca, loser_agent, new_csr_pem()[1])
    finally:
        ca.clock.offset = dt.timedelta()
    assert status == 200, answer
    holder = await db.fetchval("SELECT holder FROM leases WHERE tenant_id = $1", tenant)
    assert holder == loser_agent.agent_id
    assert results[winner][0] == 200


# -- expiry -------------------------------------------------------------------------------------


async def test_an_expired_agent_is_deleted_and_told_to_register_again(
    ca: CaServer, new_tenant: TenantFactory, db: asyncpg.Connection, tmp_path: Path
) -> None:
    tenant = await new_tenant()
    agent = await register(ca, tenant, tmp_path / "a")
    keeper = await register(ca, tenant, tmp_path / "b")
    status, answer, _ = await _call(ca, agent.cert_file, agent.key_file, "/agents/bootstrap")
    assert status == 200, answer
    users = {u["name"] for u in await _broker_users(ca)}
    assert agent_broker_user(agent.agent_id) in users
    # As if 180 days had passed for this agent only (a shared stack: other tenants'
    # agents must not be swept by a moved clock).
    now = dt.datetime.now(dt.UTC)
    await db.execute(
        "UPDATE agents SET cert_not_after = $2 WHERE id = $1",
        agent.agent_id,
        now - dt.timedelta(seconds=1),
    )

    deleted = await sweep_expired(ca.app, now)
    assert agent.agent_id in deleted and keeper.agent_id not in deleted
    assert await db.fetchval("SELECT count(*) FROM agents WHERE tenant_id = $1", tenant) == 1
    reason = await db.fetchval(
        "SELECT reason FROM revocations WHERE issuer = 'pta' AND serial = $1",
        _serial(agent.certificate),
    )
    assert reason == "certificate_expired"
    assert agent_broker_user(agent.agent_id) not in {u["name"] for u in await _broker_users(ca)}

    status, answer, _ = await _call(ca, agent.cert_file, agent.key_file, "/agents/bootstrap")
    assert (status, answer["error"]) == (401, "certificate_expired")
    assert "register the agent again" in answer["message"]
    status, answer, _ = await _call(ca, keeper.cert_file, keeper.key_file, "/agents/bootstrap")
    assert status == 200, answer


async def _broker_users(ca: CaServer) -> list[dict[str, Any]]:
    stack = ca.stack
    raw = f"{stack.demo.rabbitmq_admin_user}:{stack.demo.rabbitmq_admin_password}"
    auth = {"Authorization": "Basic " + base64.b64encode(raw.encode()).decode()}
    async with (
        aiohttp.ClientSession(headers=auth) as http,
        http.get(f"{stack.rabbitmq.management_url}/api/users") as resp,
    ):
        assert resp.status == 200
        return list(await resp.json())
