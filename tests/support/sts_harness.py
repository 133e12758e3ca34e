"""The STS in-process against the test stack's PostgreSQL: the harness the STS tests share.

`running_sts` gives a module its own database (created, migrated and seeded with the
stack's demo tenants, dropped afterwards: docs/contributing.md §9, a fresh database per test
module), a fresh ES256 signing key folder, and the app served by aiohttp's TestServer
over plain HTTP (or HTTPS when given a TLS context). The tests below check the harness
and the app's lifetime itself.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import ssl
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import ClientResponse, TCPConnector, web
from aiohttp.test_utils import TestClient, TestServer

from common import migrate, pki
from infra.demo import DemoTenant
from infra.seed import seed_cloud
from infra.stack import Stack
from sts.app import create_app
from sts.settings import StsSettings

CA_SCOPE = "urn:pta:ca/.default"
AGENT = "pta-agent"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def new_signing_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    pki.write_private_key(path / "key-1.pem", pki.new_ec_key())
    return path


def make_tls(folder: Path) -> tuple[Path, Path, Path]:
    """A service CA and a server certificate for 127.0.0.1: (ca, cert, key) paths."""
    now = dt.datetime.now(dt.UTC)
    ca_cert, ca_key = pki.make_ca("STS test service CA", now=now, lifetime_days=2)
    cert, key = pki.issue_server_cert(
        ca_cert, ca_key, hostnames=["localhost"], ips=["127.0.0.1"], now=now, lifetime_days=1
    )
    paths = folder / "ca.pem", folder / "sts.pem", folder / "sts.key"
    paths[0].write_bytes(pki.certificate_pem(ca_cert))
    paths[1].write_bytes(pki.certificate_pem(cert))
    pki.write_private_key(paths[2], key)
    return paths


@contextlib.asynccontextmanager
async def private_database(stack: Stack) -> AsyncIterator[str]:
    """A fresh database with the schema and the demo tenants; its DSN."""
    name = f"sts_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(stack.postgres.admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" OWNER pta')
        dsn = stack.postgres.dsn(name)
        conn = await asyncpg.connect(dsn)
        try:
            await migrate.apply(conn)
            await seed_cloud(conn, stack.demo)
        finally:
            await conn.close()
        yield dsn
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@dataclass
class Sts:
    """A running STS and what the tests need to talk to it."""

    client: TestClient[web.Request, web.Application]
    settings: StsSettings
    dsn: str
    contoso: DemoTenant
    fabrikam: DemoTenant

    @property
    def app(self) -> web.Application:
        app = self.client.app
        assert app is not None
        return app

    async def token(
        self, tenant: str, headers: dict[str, str] | None = None, **form: str
    ) -> ClientResponse:
        return await self.client.post(f"/{tenant}/oauth2/v2.0/token", data=form, headers=headers)

    async def password_token(
        self, t: DemoTenant, headers: dict[str, str] | None = None, **extra: str
    ) -> ClientResponse:
        form = {
            "grant_type": "password",
            "client_id": AGENT,
            "scope": f"{CA_SCOPE} openid profile offline_access",
            "username": t.admin_username,
            "password": t.admin_password,
            **extra,
        }
        return await self.token(t.id, headers, **form)

    async def sql(self, query: str, *args: Any) -> str:
        conn = await asyncpg.connect(self.dsn)
        try:
            return str(await conn.execute(query, *args))
        finally:
            await conn.close()


@contextlib.asynccontextmanager
async def running_sts(
    stack: Stack,
    folder: Path,
    *,
    ssl_context: ssl.SSLContext | None = None,
    client_ssl: ssl.SSLContext | None = None,
    **overrides: Any,
) -> AsyncIterator[Sts]:
    """The STS app on a free port, its own database and signing key folder.

    With `ssl_context` it serves HTTPS; `client_ssl` is then the test client's context.
    """
    port = free_port()
    scheme = "https" if ssl_context else "http"
    async with private_database(stack) as dsn:
        settings = StsSettings(
            public_url=f"{scheme}://127.0.0.1:{port}",
            port=port,
            postgres_dsn=dsn,
            signing_key_dir=new_signing_dir(folder / "signing"),
            tenant_cache_ttl_s=0,
            **overrides,
        )
        server = TestServer(create_app(settings), port=port)
        await server.start_server(ssl=ssl_context)
        connector = TCPConnector(ssl=client_ssl) if client_ssl is not None else None
        client = TestClient(server, connector=connector)
        try:
            yield Sts(client, settings, dsn, stack.demo.tenants[0], stack.demo.tenants[1])
        finally:
            await client.close()


def error_of(body: dict[str, Any]) -> tuple[str, int | None]:
    """(error, AADSTS code) of an Entra-shaped error body."""
    codes = body.get("error_codes") or [None]
    return body["error"], codes[0]
