"""Shared fixtures of the CA integration tests (imported by the test_ca_* modules).

Fixtures are defined as ``*_fixture`` with ``name=``: a module imports the function and
its tests ask for the short name, without the import shadowing the argument.

The CA runs in-process on 127.0.0.1 with real TLS (``web.AppRunner`` + ``web.TCPSite``),
against the session stack's PostgreSQL and RabbitMQ. Its CAs, HTTPS certificate and an
ES256 "STS" signing key are made fresh in a temporary folder; admin tokens are minted
with that key and verified through a ``StaticKeySource``. Every test gets fresh random
tenants, so tests never see each other's agents.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import secrets
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import asyncpg
import jwt
import pytest
import pytest_asyncio
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ca.admin_tokens import StaticKeySource
from ca.app import create_app, create_crl_app
from ca.settings import Settings
from common import pki
from common.contracts import ADMIN_ROLE, CA_AUDIENCE
from common.tls import client_context, server_context
from infra.stack import Stack
from tests.broker import management_call

STS_URL = "https://sts.ca-tests.invalid"
STS_KID = "ca-test-key-1"
NOW = dt.datetime.now(dt.UTC)

pytestmark = pytest.mark.stack


# -- certificates and keys ----------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """Files and keys of one test run."""

    folder: Path
    pta_ca: Path
    pta_ca_cert: x509.Certificate
    pta_ca_key: pki.PrivateKey
    service_ca: Path
    sts_key: ec.EllipticCurvePrivateKey
    other_ca_cert: x509.Certificate
    other_ca_key: pki.PrivateKey
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.sts_key.public_key()))
        return {"keys": [{**jwk, "kid": STS_KID, "use": "sig", "alg": "ES256"}]}


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(pki.certificate_pem(cert))
    return path


def make_pki(folder: Path) -> Pki:
    """Both CAs (valid from 30 days ago, so expired agent certificates can be made), the
    CA's HTTPS certificate for 127.0.0.1, a foreign CA and the STS signing key."""
    past = NOW - dt.timedelta(days=30)
    pta_cert, pta_key = pki.make_ca("PTA CA (tests)", now=past, lifetime_days=3650)
    service_cert, service_key = pki.make_ca("Service TLS CA (tests)", now=past, lifetime_days=3650)
    other_cert, other_key = pki.make_ca("PTA CA (tests)", now=past, lifetime_days=3650)
    server_cert, server_key = pki.issue_server_cert(
        service_cert, service_key, hostnames=["localhost"], ips=["127.0.0.1"], now=NOW,
        lifetime_days=30,
    )  # fmt: skip
    files = {
        "pta_ca_cert_file": _write_cert(folder / "pta-ca.pem", pta_cert),
        "service_ca_cert_file": _write_cert(folder / "service-ca.pem", service_cert),
        "tls_cert_file": _write_cert(folder / "server.pem", server_cert),
    }
    for name, key in (
        ("pta_ca_key_file", pta_key),
        ("service_ca_key_file", service_key),
        ("tls_key_file", server_key),
    ):
        files[name] = folder / f"{name}.key"
        pki.write_private_key(files[name], key)
    return Pki(
        folder=folder,
        pta_ca=files["pta_ca_cert_file"],
        pta_ca_cert=pta_cert,
        pta_ca_key=pta_key,
        service_ca=files["service_ca_cert_file"],
        sts_key=ec.generate_private_key(ec.SECP256R1()),
        other_ca_cert=other_cert,
        other_ca_key=other_key,
        files=files,
    )


def new_csr_pem(bits: int = 2048) -> tuple[rsa.RSAPrivateKey, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key, pki.csr_pem(pki.new_agent_csr(key)).decode()


# -- admin tokens --------------------------------------------------------------------------


def admin_oid(tenant_id: str) -> str:
    """The id of the admin `new_tenant` creates in a tenant (the CA checks it exists)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"pta-ca-tests-admin:{tenant_id}"))


def mint_token(
    key: Any,
    tenant_id: str,
    *,
    roles: list[str] | None = None,
    oid: str | None = None,
    lifetime_s: int = 3600,
    issued_at: float | None = None,
    audience: str = CA_AUDIENCE,
    issuer: str | None = None,
    algorithm: str = "ES256",
    kid: str = STS_KID,
) -> str:
    """An access token as the STS would issue it for scope urn:pta:ca/.default."""
    iat = int(issued_at if issued_at is not None else time.time())
    claims = {
        "iss": issuer or f"{STS_URL}/{tenant_id}/v2.0",
        "aud": audience,
        "tid": tenant_id,
        "oid": oid or admin_oid(tenant_id),
        "sub": "admin",
        "preferred_username": "admin@ca-tests.invalid",
        "roles": [ADMIN_ROLE] if roles is None else roles,
        "iat": iat,
        "nbf": iat,
        "exp": iat + lifetime_s,
    }
    return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid})


def tamper(token: str) -> str:
    """Flip one bit of the signature."""
    head, body, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[5] ^= 0x01
    return f"{head}.{body}.{base64.urlsafe_b64encode(bytes(raw)).rstrip(b'=').decode()}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- the CA under test ----------------------------------------------------------------------


class MovableClock:
    """``now`` plus an offset tests may change (renewal windows)."""

    def __init__(self) -> None:
        self.offset = dt.timedelta()

    def __call__(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self.offset


@dataclass
class CaServer:
    url: str
    crl_url: str
    settings: Settings
    app: web.Application
    pki: Pki
    stack: Stack
    clock: MovableClock
    http: aiohttp.ClientSession  # verifies the CA against the service CA, no client cert

    def agent_context(self, cert_file: Path, key_file: Path) -> ssl.SSLContext:
        return client_context(self.pki.service_ca, cert_file=cert_file, key_file=key_file)

    def admin_token(self, tenant_id: str, **kwargs: Any) -> str:
        return mint_token(self.pki.sts_key, tenant_id, **kwargs)


@pytest.fixture(scope="session", name="ca_pki")
def ca_pki_fixture(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("ca-pki"))


def ca_settings(stack: Stack, files: dict[str, Path], **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        **files,
        "host": "127.0.0.1",
        "port": 0,
        "crl_port": 0,
        "postgres_dsn": stack.postgres_dsn,
        "sts_url": STS_URL,
        "sts_ca_bundle": files["service_ca_cert_file"],
        "amqp_management_url": stack.rabbitmq.management_url,
        "amqp_admin_user": stack.demo.rabbitmq_admin_user,
        "amqp_admin_password": stack.demo.rabbitmq_admin_password,
        "agent_amqp_url": stack.rabbitmq.public_amqp_url,
        "crl_cache_s": 30,
        # Tests move this CA's clock; a sweep then would delete the shared stack's agents.
        "expiry_sweep_interval_s": 0,
        **overrides,
    }
    return Settings(**values)


@contextlib.asynccontextmanager
async def running_ca(
    stack: Stack,
    ca_pki: Pki,
    *,
    settings_overrides: dict[str, Any] | None = None,
    **app_kwargs: Any,
) -> AsyncIterator[CaServer]:
    """A CA serving HTTPS (mutual TLS optional) and plain-HTTP CRLs on free ports.

    Its keys are a static JWKS unless ``key_source=None`` is passed: then it fetches them
    from ``settings_overrides["sts_url"]`` as the deployed CA does.
    """
    settings = ca_settings(stack, ca_pki.files, **(settings_overrides or {}))
    clock = MovableClock()
    app_kwargs.setdefault("key_source", StaticKeySource(ca_pki.jwks))
    app = create_app(settings, clock=clock, **app_kwargs)
    runner = web.AppRunner(app)
    await runner.setup()
    crl_runner = web.AppRunner(create_crl_app(app))
    await crl_runner.setup()
    tls = server_context(
        settings.tls_cert_file,
        settings.tls_key_file,
        client_ca_file=settings.pta_ca_cert_file,
        require_client_cert=False,
    )
    try:
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls).start()
        await web.TCPSite(crl_runner, "127.0.0.1", settings.crl_port).start()
        port = runner.addresses[0][1]
        crl_port = crl_runner.addresses[0][1]
        connector = aiohttp.TCPConnector(ssl=client_context(ca_pki.service_ca))
        async with aiohttp.ClientSession(connector=connector) as http:
            yield CaServer(
                url=f"https://127.0.0.1:{port}",
                crl_url=f"http://127.0.0.1:{crl_port}",
                settings=settings,
                app=app,
                pki=ca_pki,
                stack=stack,
                clock=clock,
                http=http,
            )
    finally:
        await crl_runner.cleanup()
        await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="session", scope="module", name="ca")
async def ca_fixture(stack: Stack, ca_pki: Pki) -> AsyncIterator[CaServer]:
    """The CA under test, shared by the tests of one module."""
    async with running_ca(stack, ca_pki) as server:
        yield server


@pytest_asyncio.fixture(loop_scope="session", name="db")
async def db_fixture(stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.postgres_dsn)
    try:
        yield conn
    finally:
        await conn.close()


TenantFactory = Callable[[], Awaitable[str]]


@pytest_asyncio.fixture(loop_scope="session", name="new_tenant")
async def new_tenant_fixture(db: asyncpg.Connection) -> AsyncIterator[TenantFactory]:
    """Creates fresh tenants, each with its admin (``admin_oid``); deletes them (and their
    agents) after the test."""
    made: list[str] = []

    async def make() -> str:
        tenant_id = str(uuid.uuid4())
        await db.execute(
            "INSERT INTO tenants (id, name) VALUES ($1, $2)", tenant_id, f"ca-test-{tenant_id[:8]}"
        )
        await db.execute(
            "INSERT INTO admins (id, tenant_id, username, password_hash, roles)"
            " VALUES ($1, $2, 'admin@ca-tests.invalid', 'not-a-hash', $3)",
            admin_oid(tenant_id),
            tenant_id,
            [ADMIN_ROLE],
        )
        made.append(tenant_id)
        return tenant_id

    yield make
    for tenant_id in made:
        await db.execute("DELETE FROM tenants WHERE id = $1", tenant_id)


async def snapshot(db: asyncpg.Connection) -> tuple[list[Any], list[Any]]:
    """The agents and revocations tables, to prove a refusal changed nothing.

    Rows of tenants with a domain are left out: those are the stack's demo tenants, whose
    running agents send heartbeats while the tests run. Test tenants have no domain.
    """
    agents = await db.fetch(
        "SELECT * FROM agents WHERE tenant_id NOT IN (SELECT tenant_id FROM domains) ORDER BY id"
    )
    revocations = await db.fetch(
        "SELECT * FROM revocations WHERE tenant_id IS NULL "
        "OR tenant_id NOT IN (SELECT tenant_id FROM domains) ORDER BY issuer, serial"
    )
    return [tuple(r) for r in agents], [tuple(r) for r in revocations]


async def assert_unchanged(db: asyncpg.Connection, before: tuple[list[Any], list[Any]]) -> None:
    """Fail, naming the rows that differ, if the tables changed since ``before``."""
    after = await snapshot(db)
    for table, old, new in zip(("agents", "revocations"), before, after, strict=True):
        gone = [row[:4] for row in old if row not in new]
        came = [row[:4] for row in new if row not in old]
        assert not gone and not came, f"{table} changed: -{gone} +{came}"


# -- agents ----------------------------------------------------------------------------------


@dataclass
class Agent:
    """A registered agent's state folder, as the agent CLI keeps it."""

    agent_id: str
    tenant_id: str
    cert_file: Path
    key_file: Path
    answer: dict[str, Any]

    @property
    def certificate(self) -> x509.Certificate:
        return pki.load_certificate_pem(self.cert_file.read_bytes())


async def register(
    ca: CaServer, tenant_id: str, folder: Path, *, host: str = "dc1.contoso.test"
) -> Agent:
    """Register an agent through the API; its key and certificate land in ``folder``."""
    key, csr = new_csr_pem()
    async with ca.http.post(
        f"{ca.url}/agents/register",
        json={"tenant_id": tenant_id, "csr": csr, "host": host, "version": "1.0.0"},
        headers=bearer(ca.admin_token(tenant_id)),
    ) as resp:
        answer = await resp.json()
        assert resp.status == 201, answer
    cert_file, key_file = save_agent(folder, key, answer["certificate"])
    return Agent(answer["agent_id"], answer["tenant_id"], cert_file, key_file, answer)


def save_agent(folder: Path, key: rsa.RSAPrivateKey, cert_pem: str) -> tuple[Path, Path]:
    """The agent's state folder: its key (0600) and certificate."""
    folder.mkdir(parents=True, exist_ok=True)
    key_file = folder / "agent.key"
    pki.write_private_key(key_file, key)
    cert_file = folder / "agent.crt"
    cert_file.write_text(cert_pem)
    return cert_file, key_file


def agent_session(ca: CaServer, cert_file: Path, key_file: Path) -> aiohttp.ClientSession:
    """An HTTPS session presenting an agent certificate (mutual TLS)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ca.agent_context(cert_file, key_file))
    )


def issue_cert(
    ca_cert: x509.Certificate,
    ca_key: pki.PrivateKey,
    folder: Path,
    *,
    tenant_id: str,
    agent_id: str | None = None,
    now: dt.datetime = NOW,
    lifetime_days: int = 30,
) -> tuple[Path, Path, x509.Certificate]:
    """An agent certificate signed outside the CA service (foreign CA, expired, ...)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = pki.sign_agent_csr(
        pki.new_agent_csr(key),
        issuer_cert=ca_cert,
        issuer_key=ca_key,
        tenant_id=tenant_id,
        agent_id=agent_id or str(uuid.uuid4()),
        now=now,
        lifetime_days=lifetime_days,
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_file = _write_cert(folder / "agent.crt", cert)
    key_file = folder / "agent.key"
    pki.write_private_key(key_file, key)
    return cert_file, key_file, cert


def amqp_url(stack: Stack, answer: dict[str, Any], access_key: str | None = None) -> str:
    """The agent's AMQP URL: the bootstrap answer's URL with its credentials and vhost,
    verified with the stack's service TLS CA (the bundle a registered agent pins)."""
    parts = urlsplit(answer["amqp_url"])
    key = quote(access_key or answer["access_key"], safe="")
    return (
        f"{parts.scheme}://{quote(answer['username'], safe='')}:{key}@{parts.netloc}"
        f"/{quote(answer['vhost'], safe='')}?cafile={quote(str(stack.pki.service_ca_cert))}"
    )


async def management(ca: CaServer, method: str, path: str) -> tuple[int, Any]:
    return await management_call(ca.stack, method, path)


def random_key_id() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
