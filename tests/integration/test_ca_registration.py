"""Registration against real PostgreSQL and RabbitMQ: hostile inputs, the limit, the profile.

Every refusal asserts the exact status and error code and that the agents and
revocations tables did not change.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ca.broker_admin import RabbitManagement
from common import pki
from common.contracts import CA_AUDIENCE, tenant_queue, tenant_vhost
from tests.support.ca_harness import (  # noqa: F401 - fixtures, used by name
    STS_KID,
    CaServer,
    TenantFactory,
    assert_unchanged,
    bearer,
    ca_fixture,
    ca_pki_fixture,
    db_fixture,
    management,
    mint_token,
    new_csr_pem,
    new_tenant_fixture,
    random_key_id,
    register,
    running_ca,
    snapshot,
    tamper,
)

pytestmark = pytest.mark.stack

UNKNOWN_TENANT = str(uuid.uuid4())  # never inserted into tenants
_, GOOD_CSR = new_csr_pem()
_, CSR_1024 = new_csr_pem(1024)


def _oversized_csr() -> str:
    lines = GOOD_CSR.strip().splitlines()
    filler = ["A" * 64] * 160  # ~10 KB of base64 between the markers
    return "\n".join([lines[0], *filler, lines[-1]]) + "\n"


Case = Callable[[CaServer, str, str], tuple[dict[str, str], Any]]
"""(ca, tenant, other tenant) -> (headers, JSON body)."""


def _body(tenant: str, csr: str = GOOD_CSR, **extra: Any) -> dict[str, Any]:
    return {"tenant_id": tenant, "csr": csr, "host": "dc1.contoso.test", "version": "1.0", **extra}


def _admin(ca: CaServer, tenant: str, **kwargs: Any) -> dict[str, str]:
    return bearer(ca.admin_token(tenant, **kwargs))


REFUSALS: dict[str, tuple[Case, int, str]] = {
    "garbage CSR": (
        lambda ca, t, o: (_admin(ca, t), _body(t, csr="-----BEGIN CERTIFICATE REQUEST-----\nZm9v")),
        400,
        "csr_rejected",
    ),
    "CSR that is not PEM at all": (
        lambda ca, t, o: (_admin(ca, t), _body(t, csr="hello")),
        400,
        "csr_rejected",
    ),
    "oversized CSR": (
        lambda ca, t, o: (_admin(ca, t), _body(t, csr=_oversized_csr())),
        400,
        "csr_rejected",
    ),
    "CSR with a 1024-bit key": (
        lambda ca, t, o: (_admin(ca, t), _body(t, csr=CSR_1024)),
        400,
        "csr_rejected",
    ),
    "token of tenant A registering in tenant B": (
        lambda ca, t, o: (_admin(ca, t), _body(o)),
        403,
        "tenant_mismatch",
    ),
    "token without the role": (
        lambda ca, t, o: (_admin(ca, t, roles=["reader"]), _body(t)),
        403,
        "insufficient_role",
    ),
    "token without roles at all": (
        lambda ca, t, o: (_admin(ca, t, roles=[]), _body(t)),
        403,
        "insufficient_role",
    ),
    "expired token": (
        lambda ca, t, o: (_admin(ca, t, issued_at=time.time() - 7200), _body(t)),
        401,
        "invalid_token",
    ),
    "tampered token": (
        lambda ca, t, o: (bearer(tamper(ca.admin_token(t))), _body(t)),
        401,
        "invalid_token",
    ),
    "token with alg none": (
        lambda ca, t, o: (bearer(mint_token(None, t, algorithm="none")), _body(t)),
        401,
        "invalid_token",
    ),
    "token with HS256 keyed by the public JWK": (
        lambda ca, t, o: (
            bearer(mint_token(str(ca.pki.jwks["keys"][0]["x"]).encode() * 2, t, algorithm="HS256")),
            _body(t),
        ),
        401,
        "invalid_token",
    ),
    "token signed by another key": (
        lambda ca, t, o: (bearer(mint_token(ec.generate_private_key(ec.SECP256R1()), t)), _body(t)),
        401,
        "invalid_token",
    ),
    "token with an unknown kid": (
        lambda ca, t, o: (_admin(ca, t, kid="not-" + STS_KID), _body(t)),
        401,
        "invalid_token",
    ),
    "token for another audience": (
        lambda ca, t, o: (_admin(ca, t, audience="urn:pta:other"), _body(t)),
        401,
        "invalid_token",
    ),
    "token from another issuer": (
        lambda ca, t, o: (_admin(ca, t, issuer=f"https://evil.invalid/{t}/v2.0"), _body(t)),
        401,
        "invalid_token",
    ),
    "token whose issuer names the other tenant": (
        lambda ca, t, o: (_admin(ca, t, issuer=f"https://sts.ca-tests.invalid/{o}/v2.0"), _body(t)),
        401,
        "invalid_token",
    ),
    "token of a tenant this CA does not know": (
        lambda ca, t, o: (_admin(ca, UNKNOWN_TENANT), _body(UNKNOWN_TENANT)),
        401,
        "invalid_token",
    ),
    "no Authorization header": (lambda ca, t, o: ({}, _body(t)), 401, "invalid_token"),
    "Basic instead of Bearer": (
        lambda ca, t, o: ({"Authorization": "Basic YTpi"}, _body(t)),
        401,
        "invalid_token",
    ),
    "body is not JSON": (lambda ca, t, o: (_admin(ca, t), "csr=x"), 400, "invalid_request"),
    "body is a JSON array": (lambda ca, t, o: (_admin(ca, t), []), 400, "invalid_request"),
    "CSR missing": (
        lambda ca, t, o: (_admin(ca, t), {"host": "h", "version": "1"}),
        400,
        "invalid_request",
    ),
    "host too long": (
        lambda ca, t, o: (_admin(ca, t), _body(t, host="h" * 256)),
        400,
        "invalid_request",
    ),
    "host with a newline": (
        lambda ca, t, o: (_admin(ca, t), _body(t, host="dc1\nlevel=error forged")),
        400,
        "invalid_request",
    ),
    "host not a string": (
        lambda ca, t, o: (_admin(ca, t), _body(t, host=7)),
        400,
        "invalid_request",
    ),
    "version too long": (
        lambda ca, t, o: (_admin(ca, t), _body(t, version="1" * 65)),
        400,
        "invalid_request",
    ),
    "unknown field": (
        lambda ca, t, o: (_admin(ca, t), _body(t, is_admin=True)),
        400,
        "invalid_request",
    ),
    "body over 64 KiB": (
        lambda ca, t, o: (_admin(ca, t), _body(t, host="h" * 70_000)),
        413,
        "invalid_request",
    ),
}


@pytest.mark.parametrize("name", list(REFUSALS))
async def test_register_refusals_change_nothing(
    name: str, ca: CaServer, new_tenant: TenantFactory, db: asyncpg.Connection
) -> None:
    tenant, other = await new_tenant(), await new_tenant()
    make, status, code = REFUSALS[name]
    headers, body = make(ca, tenant, other)
    before = await snapshot(db)
    kwargs: dict[str, Any] = {"data": body} if isinstance(body, str) else {"json": body}
    async with ca.http.post(f"{ca.url}/agents/register", headers=headers, **kwargs) as resp:
        answer = await resp.json()
        assert (resp.status, answer["error"]) == (status, code), answer
        assert answer["message"]
    await assert_unchanged(db, before)


async def test_register_issues_the_certificate_of_the_design(
    ca: CaServer, new_tenant: TenantFactory, db: asyncpg.Connection, tmp_path: Path
) -> None:
    tenant = await new_tenant()
    agent = await register(ca, tenant, tmp_path)
    answer = agent.answer
    cert = agent.certificate
    identity = pki.agent_identity(cert)
    assert (identity.tenant_id, identity.agent_id) == (tenant, answer["agent_id"])
    assert cert.subject.rfc4514_string() == f"CN={tenant}"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
    lifetime = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=179) < lifetime <= dt.timedelta(days=180)
    assert answer["kid"] == pki.spki_sha256_kid(cert.public_key())
    assert answer["ca_certificate"] == ca.pki.pta_ca.read_text()
    assert dt.datetime.fromisoformat(answer["not_after"]) == cert.not_valid_after_utc

    row = await db.fetchrow("SELECT * FROM agents WHERE id = $1", uuid.UUID(agent.agent_id))
    assert row is not None
    assert str(row["tenant_id"]) == tenant
    assert (row["host"], row["version"], row["kid"]) == ("dc1.contoso.test", "1.0.0", answer["kid"])
    assert row["cert_serial"] == format(cert.serial_number, "x")
    assert bytes(row["spki"]) == pki.spki_der(cert.public_key())
    assert row["cert_not_after"] == cert.not_valid_after_utc
    # The cloud side declared the tenant queue, durable, with the contract's arguments.
    status, queue = await management(
        ca, "GET", f"/api/queues/{tenant_vhost(tenant)}/{tenant_queue(tenant)}"
    )
    assert status == 200 and queue["durable"] is True
    assert queue["arguments"]["x-overflow"] == "reject-publish"

    # An independent implementation accepts the chain (RFC 5280 profile, clientAuth).
    ca_file = tmp_path / "pta-ca.pem"
    ca_file.write_text(answer["ca_certificate"])
    result = await asyncio.to_thread(
        subprocess.run,
        ["/usr/bin/openssl", "verify", "-x509_strict", "-purpose", "sslclient",
         "-CAfile", str(ca_file), str(agent.cert_file)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{agent.cert_file}: OK"


async def test_register_without_tenant_id_uses_the_token_tenant(
    ca: CaServer, new_tenant: TenantFactory
) -> None:
    tenant = await new_tenant()
    _, csr = new_csr_pem()
    body = {"csr": csr, "host": "dc2", "version": "1.0"}
    async with ca.http.post(
        f"{ca.url}/agents/register", json=body, headers=_admin(ca, tenant)
    ) as resp:
        assert resp.status == 201
        assert (await resp.json())["tenant_id"] == tenant


async def test_the_same_key_cannot_register_twice(
    ca: CaServer, new_tenant: TenantFactory, db: asyncpg.Connection
) -> None:
    tenant = await new_tenant()
    _, csr = new_csr_pem()
    url, headers = f"{ca.url}/agents/register", _admin(ca, tenant)
    async with ca.http.post(url, json=_body(tenant, csr=csr), headers=headers) as resp:
        assert resp.status == 201
    before = await snapshot(db)
    async with ca.http.post(url, json=_body(tenant, csr=csr), headers=headers) as resp:
        assert (resp.status, (await resp.json())["error"]) == (400, "csr_rejected")
    await assert_unchanged(db, before)


async def test_register_is_refused_when_the_broker_is_down(
    ca: CaServer, new_tenant: TenantFactory, db: asyncpg.Connection
) -> None:
    tenant = await new_tenant()
    async with aiohttp.ClientSession() as session:
        dead = RabbitManagement(  # nothing listens on port 9 of 127.0.0.1
            base_url="http://127.0.0.1:9", user="x", password="y", session=session, timeout_s=2
        )
        async with running_ca(ca.stack, ca.pki, broker=dead) as replica:
            before = await snapshot(db)
            async with replica.http.post(
                f"{replica.url}/agents/register", json=_body(tenant), headers=_admin(ca, tenant)
            ) as resp:
                answer = await resp.json()
                assert (resp.status, answer["error"]) == (503, "broker_unavailable")
    await assert_unchanged(db, before)


async def _insert_agents(db: asyncpg.Connection, tenant: str, count: int) -> None:
    not_after = dt.datetime.now(dt.UTC) + dt.timedelta(days=180)
    await db.executemany(
        """INSERT INTO agents (id, tenant_id, host, version, spki, kid, cert_serial,
                               cert_not_after)
           VALUES ($1, $2, 'bulk', '1.0', '\\x00', $3, $4, $5)""",
        [(uuid.uuid4(), tenant, random_key_id(), f"{i + 1:x}", not_after) for i in range(count)],
    )


async def test_the_41st_registration_is_refused(
    ca: CaServer, new_tenant: TenantFactory, db: asyncpg.Connection
) -> None:
    tenant = await new_tenant()
    await _insert_agents(db, tenant, 40)
    before = await snapshot(db)
    async with ca.http.post(
        f"{ca.url}/agents/register", json=_body(tenant), headers=_admin(ca, tenant)
    ) as resp:
        answer = await resp.json()
        assert (resp.status, answer["error"]) == (409, "agent_limit_reached")
        assert "40" in answer["message"] and "DELETE /agents/" in answer["message"]
    await assert_unchanged(db, before)


async def test_concurrent_registrations_cannot_pass_the_limit(
    ca: CaServer, new_tenant: TenantFactory, db: asyncpg.Connection
) -> None:
    tenant = await new_tenant()
    await _insert_agents(db, tenant, 37)
    csrs = [new_csr_pem()[1] for _ in range(8)]
    headers = _admin(ca, tenant)

    async def one(csr: str) -> int:
        async with ca.http.post(
            f"{ca.url}/agents/register", json=_body(tenant, csr=csr), headers=headers
        ) as resp:
            return resp.status

    statuses = await asyncio.gather(*(one(csr) for csr in csrs))
    assert sorted(statuses) == [201] * 3 + [409] * 5
    count = await db.fetchval("SELECT count(*) FROM agents WHERE tenant_id = $1", tenant)
    assert count == 40


async def test_well_known_configuration(ca: CaServer) -> None:
    async with ca.http.get(f"{ca.url}/.well-known/pta-configuration") as resp:
        assert resp.status == 200
        assert await resp.json() == {
            "authority": ca.settings.sts_url,
            "client_id": "pta-agent",
            "scope": f"{CA_AUDIENCE}/.default",
            "crl_url": ca.settings.crl_url,
        }


async def test_unknown_path_is_json_404(ca: CaServer) -> None:
    async with ca.http.get(f"{ca.url}/nope") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"] == "not_found"
