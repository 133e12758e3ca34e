"""Revocation reaches the agent (agent.service_crl; docs/architecture.md "Agent lifecycle"):
issued certificates name their CRL, and the agent refuses a CA or broker server
certificate listed on the service CRL. Against the real CA (in-process, its own PKI and
CRL listener) and the stack's real RabbitMQ (AMQPS).
"""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent import service_crl, state
from agent.broker import BrokerCertificateRevoked, BrokerCredentialsRefused, open_link
from agent.cloud import BrokerGrant, CaClient
from agent.https import ServerNotTrusted
from ca.revocation import CRLS, SERVICE_ISSUER
from common import pki, tls
from infra.stack import Stack
from tests.integration.test_ca_harness import (  # noqa: F401 - fixtures, used by name
    Agent,
    CaServer,
    Pki,
    TenantFactory,
    ca_pki_fixture,
    db_fixture,
    new_tenant_fixture,
    register,
    running_ca,
)

pytestmark = pytest.mark.stack


@pytest_asyncio.fixture(loop_scope="session", scope="module", name="ca")
async def ca_fixture(stack: Stack, ca_pki: Pki) -> AsyncIterator[CaServer]:
    """A CA whose CRL listener is on a known port, so that its configuration and the
    certificates it issues name the real CRL URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        crl_port = probe.getsockname()[1]
    overrides = {"crl_port": crl_port, "crl_public_url": f"http://127.0.0.1:{crl_port}"}
    async with running_ca(stack, ca_pki, settings_overrides=overrides) as server:
        yield server


def _distribution_point(cert: x509.Certificate) -> str:
    points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    (point,) = list(points)
    assert point.full_name is not None
    (name,) = point.full_name
    return str(name.value)


def _state(ca: CaServer, agent: Agent, folder: Path) -> state.Registration:
    """The agent's state folder as `pta-agent register` writes it."""
    return state.save(
        folder,
        record=state.AgentRecord(
            agent_id=agent.agent_id,
            tenant_id=agent.tenant_id,
            ca_url=ca.url,
            host="dc1.contoso.test",
            version="1.0.0",
            registered_at=dt.datetime.now(dt.UTC),
        ),
        key=pki.read_private_key(agent.key_file),  # type: ignore[arg-type]
        certificate=agent.certificate,
        pta_ca=[ca.pki.pta_ca_cert],
        ca_bundle_pem=ca.pki.service_ca.read_bytes(),
        force=True,
    )


async def test_the_agent_refuses_a_revoked_ca_certificate(
    ca: CaServer, new_tenant: TenantFactory, db: asyncpg.Connection, tmp_path: Path
) -> None:
    tenant = await new_tenant()
    agent = await register(ca, tenant, tmp_path / "issued")
    assert _distribution_point(agent.certificate) == f"{ca.crl_url}/pta.crl"
    registration = _state(ca, agent, tmp_path / "state")

    assert await service_crl.refresh(registration, timeout_s=5)  # an empty CRL: stored
    async with CaClient(
        ca.url, ssl_context=registration.mutual_tls(), trust="t", timeout_s=5
    ) as client:
        await client.bootstrap()

    server = pki.load_certificate_pem(Path(ca.settings.tls_cert_file).read_bytes())
    serial = format(server.serial_number, "x")
    await db.execute(
        """INSERT INTO revocations (issuer, serial, tenant_id, agent_id, revoked_at, reason)
           VALUES ('service', $1, NULL, NULL, now(), 'key_compromise')""",
        serial,
    )
    try:
        ca.app[CRLS].invalidate(SERVICE_ISSUER)
        # The configuration call still works (no CRL check yet for the new entry), the
        # newer CRL is stored, and from then on the CA's certificate is refused.
        assert await service_crl.refresh(registration, timeout_s=5)
        async with CaClient(
            ca.url, ssl_context=registration.mutual_tls(), trust="t", timeout_s=5
        ) as client:
            with pytest.raises(ServerNotTrusted, match="REVOKED"):
                await client.bootstrap()
        # A refresh now fails at the revoked CA: the stored CRL stays in force.
        assert not await service_crl.refresh(registration, timeout_s=5)
        assert state.usable_crl(registration.dir.service_crl, dt.datetime.now(dt.UTC))
    finally:
        await db.execute("DELETE FROM revocations WHERE issuer = 'service' AND serial = $1", serial)
        ca.app[CRLS].invalidate(SERVICE_ISSUER)


async def test_the_agent_refuses_a_revoked_broker_certificate(stack: Stack, tmp_path: Path) -> None:
    service_ca = pki.load_certificate_pem(stack.pki.service_ca_cert.read_bytes())
    service_key = pki.read_private_key(stack.pki.service_ca_key)
    broker_cert = pki.load_certificate_pem(stack.pki.server_cert("rabbitmq").read_bytes())
    assert _distribution_point(broker_cert) == f"{stack.services.crl_url}/service.crl"
    now = dt.datetime.now(dt.UTC)
    grant = BrokerGrant.model_validate(
        {
            "amqp_url": stack.services.amqp_public_url,
            "vhost": "/",
            "username": "nobody",
            "access_key": "not-a-key",
            "queue": "q",
            "reply_exchange": "x",
            "publisher": "sts",
            "expires_at": now.isoformat(),
            "agent_id": "a",
            "tenant_id": "t",
            "heartbeat_interval_s": 60,
        }
    )
    assert grant.amqp_url.startswith("amqps://")

    async def connect(revoked: list[tuple[int, dt.datetime]], name: str) -> None:
        crl = pki.build_crl(service_ca, service_key, revoked, now=now, next_update_hours=1)
        crl_file = tmp_path / f"{name}.pem"
        crl_file.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        context = tls.client_context(stack.pki.service_ca_cert, crl_file=crl_file)
        await open_link(grant, ssl_context=context, prefetch=1, timeout_s=10, name="t")

    # Not listed: the TLS handshake passes and the (made-up) credentials are refused.
    with pytest.raises(BrokerCredentialsRefused):
        await connect([], "empty")
    with pytest.raises(BrokerCertificateRevoked, match="REVOKED"):
        await connect([(broker_cert.serial_number, now)], "revoked")
