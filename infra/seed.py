"""Seed the cloud database with the demo tenants: tenant, verified domain, admin, app.

Idempotent (upserts keyed by the ids in demo.json), so a second `up` changes nothing.
The admin password is stored only as an argon2id hash (docs/design.md: the cloud never stores a
directory password; cloud-only admin passwords are hashed with a memory-hard KDF).
"""

from __future__ import annotations

import uuid

import asyncpg
from argon2 import PasswordHasher

from common.contracts import ADMIN_ROLE
from infra.demo import Demo


async def seed_cloud(conn: asyncpg.Connection, demo: Demo) -> None:
    hasher = PasswordHasher()
    async with conn.transaction():
        for t in demo.tenants:
            await conn.execute(
                """INSERT INTO tenants (id, name) VALUES ($1, $2)
                   ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name""",
                uuid.UUID(t.id),
                t.name,
            )
            await conn.execute(
                """INSERT INTO domains (name, tenant_id, is_verified) VALUES ($1, $2, true)
                   ON CONFLICT (name) DO NOTHING""",
                t.domain,
                uuid.UUID(t.id),
            )
            exists = await conn.fetchval(
                "SELECT 1 FROM admins WHERE tenant_id = $1 AND username = $2",
                uuid.UUID(t.id),
                t.admin_username,
            )
            if not exists:
                await conn.execute(
                    """INSERT INTO admins (id, tenant_id, username, display_name,
                                           password_hash, roles)
                       VALUES ($1, $2, $3, $4, $5, $6)""",
                    uuid.uuid4(),
                    uuid.UUID(t.id),
                    t.admin_username,
                    f"{t.name} Administrator",
                    hasher.hash(t.admin_password),
                    [ADMIN_ROLE],
                )
            await conn.execute(
                """INSERT INTO apps (client_id, tenant_id, name, redirect_uris, is_public)
                   VALUES ($1, $2, $3, $4, true)
                   ON CONFLICT (client_id) DO NOTHING""",
                uuid.UUID(t.app_client_id),
                uuid.UUID(t.id),
                f"{t.name} demo app",
                [t.app_redirect_uri],
            )
