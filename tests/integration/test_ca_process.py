"""``pta-ca`` as a process: settings from PTA_CA_* env, both listeners, admin tokens checked
against a JWKS fetched over verified TLS from an "STS", clean stop on SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from cryptography import x509

from common import pki
from common.tls import client_context, server_context
from infra.stack import Stack
from tests.logs import logged_event
from tests.support.ca_harness import (  # noqa: F401 - fixtures, used by name
    Pki,
    TenantFactory,
    bearer,
    ca_pki_fixture,
    db_fixture,
    mint_token,
    new_csr_pem,
    new_tenant_fixture,
    save_agent,
)

pytestmark = pytest.mark.stack

START_TIMEOUT_S = 20


def agent_session_for(ca_pki: Pki, cert_file: Path, key_file: Path) -> aiohttp.ClientSession:
    context = client_context(ca_pki.service_ca, cert_file=cert_file, key_file=key_file)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest_asyncio.fixture(loop_scope="session")
async def sts(ca_pki: Pki) -> AsyncIterator[str]:
    """A stand-in STS serving only its JWKS, over HTTPS from the service TLS CA."""
    calls: list[str] = []

    async def keys(request: web.Request) -> web.Response:
        calls.append(request.match_info["tenant"])
        return web.json_response(ca_pki.jwks)

    app = web.Application()
    app.router.add_get("/{tenant}/discovery/v2.0/keys", keys)
    runner = web.AppRunner(app)
    await runner.setup()
    tls = server_context(ca_pki.files["tls_cert_file"], ca_pki.files["tls_key_file"])
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls).start()
    try:
        yield f"https://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def _wait_until_serving(
    http: aiohttp.ClientSession, url: str, proc: asyncio.subprocess.Process
) -> None:
    async with asyncio.timeout(START_TIMEOUT_S):
        while True:
            assert proc.returncode is None, "pta-ca exited during start"
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)  # polling a port: there is no event to await


async def test_pta_ca_process_serves_and_stops_on_sigterm(
    stack: Stack, ca_pki: Pki, sts: str, new_tenant: TenantFactory,
    tmp_path: Path,
) -> None:  # fmt: skip
    port, crl_port = _free_port(), _free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        **{f"PTA_CA_{name.upper()}": str(path) for name, path in ca_pki.files.items()},
        "PTA_CA_HOST": "127.0.0.1",
        "PTA_CA_PORT": str(port),
        "PTA_CA_CRL_PORT": str(crl_port),
        "PTA_CA_PUBLIC_URL": f"https://127.0.0.1:{port}",
        "PTA_CA_POSTGRES_DSN": stack.postgres_dsn,
        "PTA_CA_STS_URL": sts,
        "PTA_CA_STS_CA_BUNDLE": str(ca_pki.service_ca),
        "PTA_CA_AMQP_MANAGEMENT_URL": stack.rabbitmq.management_url,
        "PTA_CA_AMQP_ADMIN_USER": stack.demo.rabbitmq_admin_user,
        "PTA_CA_AMQP_ADMIN_PASSWORD": stack.demo.rabbitmq_admin_password,
        "PTA_CA_AGENT_AMQP_URL": stack.rabbitmq.public_amqp_url,
    }
    log_file = tmp_path / "ca.log"
    with log_file.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from ca.main import main; main()",
            env=env, stdout=log, stderr=log, cwd=Path(__file__).parents[2],
        )  # fmt: skip
    connector = aiohttp.TCPConnector(ssl=client_context(ca_pki.service_ca))
    try:
        async with aiohttp.ClientSession(connector=connector) as http:
            base = f"https://127.0.0.1:{port}"
            await _wait_until_serving(http, f"{base}/.well-known/pta-configuration", proc)
            async with http.get(f"{base}/.well-known/pta-configuration") as resp:
                config = await resp.json()
            assert config["authority"] == sts
            assert config["crl_url"] == f"http://127.0.0.1:{crl_port}"

            tenant = await new_tenant()
            key, csr = new_csr_pem()
            token = mint_token(ca_pki.sts_key, tenant, issuer=f"{sts}/{tenant}/v2.0")
            body = {"csr": csr, "host": "dc1", "version": "1.0"}
            async with http.post(
                f"{base}/agents/register", json=body, headers=bearer(token)
            ) as resp:
                answer = await resp.json()
                assert resp.status == 201, answer
            # A token signed by a key the STS does not publish is refused.
            forged = mint_token(ca_pki.other_ca_key, tenant, issuer=f"{sts}/{tenant}/v2.0")
            async with http.get(f"{base}/agents", headers=bearer(forged)) as resp:
                assert (resp.status, (await resp.json())["error"]) == (401, "invalid_token")

        cert_file, key_file = save_agent(tmp_path / "agent", key, answer["certificate"])
        async with agent_session_for(ca_pki, cert_file, key_file) as agent_http:
            async with agent_http.post(f"{base}/agents/bootstrap", json={}) as resp:
                credentials = await resp.json()
                assert resp.status == 200, credentials

        async with aiohttp.ClientSession() as plain:
            async with plain.get(f"http://127.0.0.1:{crl_port}/pta.crl") as resp:
                assert resp.status == 200
                crl = x509.load_der_x509_crl(await resp.read())
                assert crl.issuer == ca_pki.pta_ca_cert.subject
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            returncode = await proc.wait()
    assert returncode == 0, log_file.read_text()
    logged = log_file.read_text()
    assert logged_event(logged, "ca_started") and logged_event(logged, "agent_registered")
    assert stack.demo.rabbitmq_admin_password not in logged
    assert logged_event(logged, "agent_bootstrapped")
    assert credentials["access_key"] not in logged
    assert pki.certificate_pem(ca_pki.pta_ca_cert).decode() not in logged
    assert str(uuid.UUID(answer["agent_id"])) == answer["agent_id"]


async def test_pta_ca_refuses_bad_settings_naming_them(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PTA_CA_STS_URL": "http://not-https.test",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from ca.main import main; main()",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=Path(__file__).parents[2],
    )  # fmt: skip
    async with asyncio.timeout(20):
        _, stderr = await proc.communicate()
    assert proc.returncode == 2
    message = stderr.decode()
    assert "sts_url" in message and "postgres_dsn" in message and "tls_cert_file" in message
