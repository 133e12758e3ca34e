"""PostgreSQL: migrations apply on an empty database and are a no-op the second time."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from common import migrate
from infra.stack import Stack

pytestmark = pytest.mark.stack


async def test_migrations_apply_once(stack: Stack) -> None:
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(stack.postgres.admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" OWNER pta')
        conn = await asyncpg.connect(stack.postgres.dsn(name))
        try:
            first = await migrate.apply(conn)
            assert first == [m.version for m in migrate.available()]
            tables = {
                r["tablename"]
                for r in await conn.fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname='public'"
                )
            }
            assert {"tenants", "domains", "admins", "apps", "agents", "revocations"} <= tables
            assert await migrate.apply(conn) == []
            count = await conn.fetchval("SELECT count(*) FROM schema_migrations")
            assert count == len(first)
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_demo_tenants_seeded(stack: Stack) -> None:
    conn = await asyncpg.connect(stack.postgres_dsn)
    try:
        rows = await conn.fetch(
            "SELECT d.name FROM domains d JOIN tenants t ON t.id = d.tenant_id "
            "WHERE d.is_verified ORDER BY d.name"
        )
        assert [r["name"] for r in rows] == ["contoso.test", "fabrikam.test"]
        hashes = await conn.fetch("SELECT password_hash FROM admins")
        assert hashes and all(h["password_hash"].startswith("$argon2id$") for h in hashes)
        for tenant in stack.demo.tenants:  # no admin password stored in any recognisable form
            assert all(tenant.admin_password not in h["password_hash"] for h in hashes)
    finally:
        await conn.close()
