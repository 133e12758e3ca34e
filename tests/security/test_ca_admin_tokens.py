"""The CA re-checks the admin behind a token, and a made-up tenant costs it nothing
(issue 8, finding 9, the CA's part).

- Through the stack's real STS and CA: an admin signs in for the CA, then loses the
  hybrid_identity_admin role (403 ``insufficient_role``) or is deleted (401
  ``admin_not_found``) while the token is still valid: the CA refuses it at once.
- A CA fetching its keys from a stand-in STS that counts requests: tokens naming random
  tenants cause no JWKS fetch, and after a thousand of them a real tenant's keys are still
  cached (no eviction, no refetch).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
import pytest_asyncio
from aiohttp import web
from argon2 import PasswordHasher

from common.contracts import ADMIN_ROLE
from common.tls import server_context
from infra.stack import Stack
from tests.e2e.support import (
    ca_admin_token,
    client_ssl,
    delete_agent,
    register_agent,
    stack_doc,
    tenant_doc,
)
from tests.support.ca_harness import (  # noqa: F401 - fixtures, used by name
    Pki,
    TenantFactory,
    bearer,
    ca_pki_fixture,
    db_fixture,
    mint_token,
    new_tenant_fixture,
    running_ca,
)

pytestmark = pytest.mark.stack


async def _status(
    stack: Stack, method: str, path: str, token: str, **kwargs: object
) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http:
        async with http.request(
            method,
            f"{stack_doc(stack)['ca_url']}{path}",
            headers=bearer(token),
            ssl=client_ssl(stack),
            **kwargs,
        ) as r:
            return r.status, (await r.json())["error"] if r.status >= 400 else ""


async def test_a_token_of_a_demoted_or_deleted_admin_is_refused(
    stack: Stack, db: asyncpg.Connection, tmp_path: Path
) -> None:
    contoso = tenant_doc(stack, "contoso.test")
    username = f"recheck-{uuid.uuid4().hex[:8]}@contoso.test"
    password = f"Pw-{uuid.uuid4().hex}"
    admin_id = uuid.uuid4()
    await db.execute(
        "INSERT INTO admins (id, tenant_id, username, display_name, password_hash, roles)"
        " VALUES ($1, $2, $3, 'Recheck', $4, $5)",
        admin_id,
        uuid.UUID(contoso["id"]),
        username,
        PasswordHasher().hash(password),
        [ADMIN_ROLE],
    )
    demo_admin = contoso["admin"]
    cleanup_token = await ca_admin_token(stack, demo_admin["username"], demo_admin["password"])
    registered = []
    try:
        token = await ca_admin_token(stack, username, password)
        assert await _status(stack, "GET", "/agents", token) == (200, "")

        await db.execute("UPDATE admins SET roles = '{}' WHERE id = $1", admin_id)
        try:
            agent = await register_agent(stack, token, tmp_path / "demoted")
            registered.append(agent.agent_id)
        except AssertionError as exc:
            assert "insufficient_role" in str(exc)
        assert not registered, "a demoted admin registered an agent"
        assert await _status(stack, "GET", "/agents", token) == (403, "insufficient_role")

        await db.execute("DELETE FROM admins WHERE id = $1", admin_id)
        try:
            agent = await register_agent(stack, token, tmp_path / "deleted")
            registered.append(agent.agent_id)
        except AssertionError as exc:
            assert "admin_not_found" in str(exc)
        assert not registered, "a deleted admin registered an agent"
        assert await _status(stack, "GET", "/agents", token) == (401, "admin_not_found")
    finally:
        await db.execute("DELETE FROM admins WHERE id = $1", admin_id)
        for agent_id in registered:
            await delete_agent(stack, cleanup_token, agent_id)


@pytest_asyncio.fixture(loop_scope="session")
async def counting_sts(ca_pki: Pki, db: asyncpg.Connection) -> AsyncIterator[tuple[str, list[str]]]:
    """A stand-in STS serving its JWKS to tenants that exist (404 otherwise), counting."""
    calls: list[str] = []

    async def keys(request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        calls.append(tenant)
        try:
            exists = await db.fetchval("SELECT EXISTS (SELECT 1 FROM tenants WHERE id = $1)",
                                       uuid.UUID(tenant))  # fmt: skip
        except ValueError:
            exists = False
        return web.json_response(ca_pki.jwks) if exists else web.json_response({}, status=404)

    app = web.Application()
    app.router.add_get("/{tenant}/discovery/v2.0/keys", keys)
    runner = web.AppRunner(app)
    await runner.setup()
    tls = server_context(ca_pki.files["tls_cert_file"], ca_pki.files["tls_key_file"])
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls).start()
    try:
        yield f"https://127.0.0.1:{runner.addresses[0][1]}", calls
    finally:
        await runner.cleanup()


async def test_random_tenants_cause_no_jwks_fetch_and_evict_nothing(
    stack: Stack, ca_pki: Pki, counting_sts: tuple[str, list[str]], new_tenant: TenantFactory
) -> None:
    sts_url, calls = counting_sts
    overrides = {"sts_url": sts_url}
    async with running_ca(stack, ca_pki, settings_overrides=overrides, key_source=None) as ca:

        async def list_agents(tenant_id: str) -> int:
            token = mint_token(ca_pki.sts_key, tenant_id, issuer=f"{sts_url}/{tenant_id}/v2.0")
            async with ca.http.get(f"{ca.url}/agents", headers=bearer(token)) as r:
                return r.status

        tenant = await new_tenant()
        assert await list_agents(tenant) == 200
        assert calls == [tenant]

        # More made-up tenants than the old per-tenant cache held (1024), a few at a time.
        gate = asyncio.Semaphore(16)

        async def made_up() -> int:
            async with gate:
                return await list_agents(str(uuid.uuid4()))

        statuses = await asyncio.gather(*(made_up() for _ in range(1100)))
        assert set(statuses) == {401}
        assert await list_agents(tenant) == 200
        assert calls == [tenant], f"{len(calls)} JWKS fetches"
