"""An in-process stand-in for the CA and STS (``FakeCloud``) with its own key material.

``FakeCloud`` serves the endpoints of docs/architecture.md ("CA HTTP API") and the STS's
device code and token endpoints over real TLS (service TLS CA, optional client
certificates from a PTA CA, both made with common.pki). Used by the agent's integration
tests (tests/integration/test_agent_clients.py, test_agent_runner.py; the ``material`` and
``cloud`` fixtures are in tests/integration/conftest.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from click.testing import CliRunner, Result
from cryptography import x509

from agent import cli, state
from common import pki, tls

ADMIN = "admin@contoso.test"
ADMIN_PASSWORD = "Admin-pa55-marker-91c2"
DOMAIN = "contoso.test"


# --------------------------------------------------------------------------- key material


@dataclass(frozen=True)
class Material:
    """Files of one test PKI: service TLS CA and server certificate, PTA CA."""

    dir: Path
    service_ca: Path
    server_cert: Path
    server_key: Path
    pta_ca: Path
    pta_ca_cert: x509.Certificate
    pta_ca_key: pki.PrivateKey
    stranger_ca: Path  # a bundle that signed nothing of ours


def make_material(directory: Path) -> Material:
    now = dt.datetime.now(dt.UTC)
    service_ca, service_key = pki.make_ca("Test service TLS CA", now=now, lifetime_days=30)
    server, server_key = pki.issue_server_cert(
        service_ca, service_key, hostnames=["ca.test"], ips=["127.0.0.1"], now=now,
        lifetime_days=10,
    )  # fmt: skip
    pta_ca, pta_key = pki.make_ca("Test PTA CA", now=now, lifetime_days=3650)
    stranger, _ = pki.make_ca("Test stranger CA", now=now, lifetime_days=30)
    paths = {
        "service-ca.pem": pki.certificate_pem(service_ca),
        "server.pem": pki.certificate_pem(server),
        "pta-ca.pem": pki.certificate_pem(pta_ca),
        "stranger-ca.pem": pki.certificate_pem(stranger),
    }
    for name, data in paths.items():
        (directory / name).write_bytes(data)
    pki.write_private_key(directory / "server.key", server_key)
    return Material(
        dir=directory,
        service_ca=directory / "service-ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        pta_ca=directory / "pta-ca.pem",
        pta_ca_cert=pta_ca,
        pta_ca_key=pta_key,
        stranger_ca=directory / "stranger-ca.pem",
    )


# --------------------------------------------------------------------------- the stand-in


@dataclass
class Agent:
    agent_id: str
    tenant_id: str
    serial: int
    host: str
    deleted: bool = False
    heartbeats: list[dict[str, Any]] = field(default_factory=list)


GrantFactory = Callable[[Agent], Awaitable[dict[str, Any]]]


class FakeCloud:
    """CA and STS endpoints on one HTTPS listener, following docs/architecture.md."""

    def __init__(self, material: Material) -> None:
        self.material = material
        self.tenant_id = str(uuid.uuid4())
        self.url = ""
        self.agents: dict[str, Agent] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # method, path, form/json
        self.device_script: list[str] = []  # token endpoint answers for the device code
        self.device_interval_s = 0.01
        self.renew = False
        self.heartbeat_seen = asyncio.Event()
        self.grant_factory: GrantFactory | None = None
        self._token = f"token-{uuid.uuid4()}"
        self._runner: web.AppRunner | None = None

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/.well-known/pta-configuration", self.configuration)
        app.router.add_post("/{tenant}/oauth2/v2.0/devicecode", self.devicecode)
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self.token)
        app.router.add_post("/agents/register", self.register)
        app.router.add_post("/agents/bootstrap", self.bootstrap)
        app.router.add_post("/agents/heartbeat", self.heartbeat)
        app.router.add_get("/agents/self", self.self_view)
        app.router.add_delete("/agents/{agent_id}", self.delete)
        context = tls.server_context(
            self.material.server_cert,
            self.material.server_key,
            client_ca_file=self.material.pta_ca,
        )
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"https://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # ---------------------------------------------------------------- STS

    async def configuration(self, _: web.Request) -> web.Response:
        return web.json_response(
            {"authority": self.url, "client_id": "pta-agent",
             "scope": "urn:pta:ca/.default", "crl_url": "http://127.0.0.1:1"}
        )  # fmt: skip

    async def devicecode(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        self.requests.append(("POST", request.path, {k: str(v) for k, v in form.items()}))
        if request.match_info["tenant"] not in (DOMAIN, self.tenant_id):
            return _oauth(400, "invalid_request", 90002, "Tenant not found.")
        return web.json_response(
            {"device_code": "dc-secret", "user_code": "WXYZ-1234",
             "verification_uri": f"{self.url}/device", "expires_in": 900,
             "interval": self.device_interval_s,
             "message": f"To sign in, open {self.url}/device and enter WXYZ-1234."}
        )  # fmt: skip

    async def token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.requests.append(("POST", request.path, form))
        if form.get("client_id") != "pta-agent":
            return _oauth(400, "unauthorized_client", 700016, "Unknown client.")
        if form.get("grant_type") == "password":
            if form.get("scope") != "urn:pta:ca/.default":
                return _oauth(400, "invalid_scope", 70011, "Bad scope.")
            if (form.get("username"), form.get("password")) != (ADMIN, ADMIN_PASSWORD):
                return _oauth(
                    400, "invalid_grant", 50126,
                    "Error validating credentials due to invalid username or password.",
                )  # fmt: skip
            return self._issue_token()
        if form.get("grant_type") == "urn:ietf:params:oauth:grant-type:device_code":
            assert form.get("device_code") == "dc-secret"
            step = self.device_script.pop(0) if self.device_script else "ok"
            if step == "ok":
                return self._issue_token()
            return _oauth(400, step, 70016 if step == "authorization_pending" else 0, step)
        return _oauth(400, "unsupported_grant_type", 70003, "No.")

    def _issue_token(self) -> web.Response:
        return web.json_response(
            {"access_token": self._token, "token_type": "Bearer", "expires_in": 3600}
        )

    # ---------------------------------------------------------------- CA

    def _admin(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") != f"Bearer {self._token}":
            return _ca_error(401, "invalid_token", "Sign in again.")
        return None

    def _agent(self, request: web.Request) -> Agent | web.Response:
        cert = tls.peer_certificate(request.transport)
        if cert is None:
            return _ca_error(401, "client_certificate_required", "Present your certificate.")
        identity = pki.agent_identity(cert)
        agent = self.agents.get(identity.agent_id)
        if agent is None:
            return _ca_error(401, "agent_not_found", "Register again.")
        if agent.deleted:
            return _ca_error(401, "certificate_revoked", "This agent was deleted.")
        return agent

    async def register(self, request: web.Request) -> web.Response:
        if (refused := self._admin(request)) is not None:
            return refused
        body = await request.json()
        self.requests.append(("POST", request.path, {k: str(v) for k, v in body.items()}))
        try:
            csr = pki.validate_csr(body["csr"].encode())
        except pki.CsrRejected as exc:
            return _ca_error(400, "csr_rejected", str(exc))
        agent_id = str(uuid.uuid4())
        cert = pki.sign_agent_csr(
            csr, issuer_cert=self.material.pta_ca_cert, issuer_key=self.material.pta_ca_key,
            tenant_id=self.tenant_id, agent_id=agent_id, now=dt.datetime.now(dt.UTC),
            lifetime_days=180,
        )  # fmt: skip
        self.agents[agent_id] = Agent(agent_id, self.tenant_id, cert.serial_number, body["host"])
        return web.json_response(
            {"agent_id": agent_id, "tenant_id": self.tenant_id,
             "certificate": pki.certificate_pem(cert).decode(),
             "ca_certificate": pki.certificate_pem(self.material.pta_ca_cert).decode(),
             "not_after": cert.not_valid_after_utc.isoformat(),
             "kid": pki.spki_sha256_kid(csr.public_key())},
            status=201,
        )  # fmt: skip

    async def bootstrap(self, request: web.Request) -> web.Response:
        agent = self._agent(request)
        if isinstance(agent, web.Response):
            return agent
        if self.grant_factory is None:
            return _ca_error(503, "broker_unavailable", "No broker in this test.")
        return web.json_response(await self.grant_factory(agent))

    async def heartbeat(self, request: web.Request) -> web.Response:
        agent = self._agent(request)
        if isinstance(agent, web.Response):
            return agent
        agent.heartbeats.append(await request.json())
        self.heartbeat_seen.set()
        return web.json_response({"renew": self.renew, "heartbeat_interval_s": 600})

    async def self_view(self, request: web.Request) -> web.Response:
        agent = self._agent(request)
        if isinstance(agent, web.Response):
            return agent
        return web.json_response(
            {"agent_id": agent.agent_id, "status": "active" if agent.heartbeats else "inactive",
             "last_heartbeat_at": None, "host": agent.host}
        )  # fmt: skip

    async def delete(self, request: web.Request) -> web.Response:
        if (refused := self._admin(request)) is not None:
            return refused
        agent = self.agents.get(request.match_info["agent_id"])
        if agent is None or agent.deleted:
            return _ca_error(404, "agent_not_found", "No such agent.")
        agent.deleted = True
        return web.Response(status=204)


def _oauth(status: int, error: str, code: int, text: str) -> web.Response:
    return web.json_response(
        {"error": error, "error_description": f"AADSTS{code}: {text}\r\nTrace ID: x",
         "error_codes": [code], "trace_id": "x", "correlation_id": "y"},
        status=status,
    )  # fmt: skip


def _ca_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


# --------------------------------------------------------------------------- fixtures


def server_tls(material: Material) -> ssl.SSLContext:
    return tls.client_context(material.service_ca)


async def invoke(*args: str, input: str | None = None) -> Result:
    """Run the CLI in a worker thread: it runs its own event loop, the stand-in runs here."""
    return await asyncio.to_thread(CliRunner().invoke, cli.main, list(args), input=input)


async def registered(cloud: FakeCloud, state_dir: Path) -> state.Registration:
    result = await invoke(
        "register", "--tenant", DOMAIN, "--server", cloud.url,
        "--ca-bundle", str(cloud.material.service_ca), "--state-dir", str(state_dir),
        "--username", ADMIN, "--password-stdin", "--host", "dc-01",
        input=f"{ADMIN_PASSWORD}\n",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return state.load(state_dir)
