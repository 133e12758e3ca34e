"""The agent's HTTPS clients and CLI against an in-process stand-in for the CA and STS.

``FakeCloud`` (tests.support.fake_cloud) serves the endpoints of docs/architecture.md
("CA HTTP API") and the STS's device code and token endpoints over real TLS (service TLS
CA, optional client certificates from a PTA CA, both made with common.pki), so these
tests cover what the unit tests cannot: TLS pinning and its error messages, mutual TLS,
the exact requests sent, device code polling, and register -> status -> unregister
through the CLI. tests/integration/test_ca_*.py and tests/e2e cover the real CA and STS;
``FakeCloud`` is also used by test_agent_runner.py.
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import orjson
import pytest

from agent import signin
from agent.cloud import CaClient
from agent.https import (
    CertificateProbablyRefused,
    ClientCertificateRefused,
    ServerNotTrusted,
    Unreachable,
)
from agent.signin import (
    DeviceCodeExpired,
    DeviceCodeLogin,
    OAuthError,
    PasswordLogin,
    TokenClient,
)
from common import pki, tls
from tests.support.fake_cloud import (
    ADMIN,
    ADMIN_PASSWORD,
    DOMAIN,
    FakeCloud,
    Material,
    invoke,
    registered,
    server_tls,
)

# --------------------------------------------------------------------------- sign-in


async def test_password_grant_sends_client_scope_and_credentials(cloud: FakeCloud) -> None:
    token = await signin.acquire_admin_token(
        cloud.url, DOMAIN, PasswordLogin(ADMIN, ADMIN_PASSWORD),
        ssl_context=server_tls(cloud.material), trust="test bundle", timeout_s=5,
    )  # fmt: skip
    assert token.value.startswith("token-")
    method, path, form = cloud.requests[-1]
    assert (method, path) == ("POST", f"/{DOMAIN}/oauth2/v2.0/token")
    assert form == {
        "grant_type": "password", "client_id": "pta-agent", "scope": "urn:pta:ca/.default",
        "username": ADMIN, "password": ADMIN_PASSWORD,
    }  # fmt: skip


async def test_wrong_password_is_aadsts50126_with_what_to_do(cloud: FakeCloud) -> None:
    with pytest.raises(OAuthError) as caught:
        await signin.acquire_admin_token(
            cloud.url, DOMAIN, PasswordLogin(ADMIN, "wrong-marker"),
            ssl_context=server_tls(cloud.material), trust="test bundle", timeout_s=5,
        )  # fmt: skip
    message = str(caught.value)
    assert message.startswith("AADSTS50126: Error validating credentials")
    assert "Trace ID" not in message and "wrong-marker" not in message


async def test_device_code_polls_honouring_pending_and_slow_down(cloud: FakeCloud) -> None:
    cloud.device_script = ["authorization_pending", "slow_down", "authorization_pending", "ok"]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    shown: list[str] = []
    async with TokenClient(
        cloud.url, DOMAIN, ssl_context=server_tls(cloud.material), trust="t", timeout_s=5,
        sleep=sleep,
    ) as client:  # fmt: skip
        token = await client.sign_in(DeviceCodeLogin(show=lambda d: shown.append(d.message)))
    assert token.value.startswith("token-")
    assert shown == [f"To sign in, open {cloud.url}/device and enter WXYZ-1234."]
    interval = cloud.device_interval_s
    assert slept == [interval, interval, interval + 5, interval + 5]
    _, path, form = cloud.requests[0]
    assert path == f"/{DOMAIN}/oauth2/v2.0/devicecode"
    assert form == {"client_id": "pta-agent", "scope": "urn:pta:ca/.default"}


async def test_device_code_expiry_ends_the_wait(cloud: FakeCloud) -> None:
    cloud.device_script = ["authorization_pending", "expired_token"]
    async with TokenClient(
        cloud.url, DOMAIN, ssl_context=server_tls(cloud.material), trust="t", timeout_s=5
    ) as client:
        with pytest.raises(DeviceCodeExpired):
            await client.sign_in(DeviceCodeLogin(show=lambda d: None))


async def test_unknown_tenant(cloud: FakeCloud) -> None:
    async with TokenClient(
        cloud.url, "nope.test", ssl_context=server_tls(cloud.material), trust="t", timeout_s=5
    ) as client:
        with pytest.raises(OAuthError, match=r"AADSTS90002[\s\S]*--tenant"):
            await client.sign_in(DeviceCodeLogin(show=lambda d: None))


# --------------------------------------------------------------------------- TLS


async def test_server_signed_by_another_ca_is_not_trusted(cloud: FakeCloud) -> None:
    context = tls.client_context(cloud.material.stranger_ca)
    with pytest.raises(ServerNotTrusted) as caught:
        await signin.discover(cloud.url, ssl_context=context, trust="THE-BUNDLE", timeout_s=5)
    assert "is not signed by THE-BUNDLE" in str(caught.value)


async def test_server_name_mismatch_is_explained(cloud: FakeCloud) -> None:
    url = cloud.url.replace("127.0.0.1", "localhost")  # the certificate names 127.0.0.1
    with pytest.raises(ServerNotTrusted, match="not valid for the name"):
        await signin.discover(url, ssl_context=server_tls(cloud.material), trust="t", timeout_s=5)


async def test_unreachable_ca(material: Material) -> None:
    with pytest.raises(Unreachable, match="firewall"):
        await signin.discover(
            "https://127.0.0.1:1", ssl_context=server_tls(material), trust="t", timeout_s=5
        )


async def test_client_certificate_from_another_pta_ca_is_refused(
    cloud: FakeCloud, tmp_path: Path
) -> None:
    now = dt.datetime.now(dt.UTC)
    rogue_ca, rogue_key = pki.make_ca("Rogue PTA CA", now=now, lifetime_days=10)
    key = pki.new_rsa_key()
    cert = pki.sign_agent_csr(
        pki.new_agent_csr(key), issuer_cert=rogue_ca, issuer_key=rogue_key,
        tenant_id=cloud.tenant_id, agent_id=str(uuid.uuid4()), now=now, lifetime_days=5,
    )  # fmt: skip
    (tmp_path / "rogue.crt").write_bytes(pki.certificate_pem(cert))
    pki.write_private_key(tmp_path / "rogue.key", key)
    context = tls.client_context(
        cloud.material.service_ca, cert_file=tmp_path / "rogue.crt",
        key_file=tmp_path / "rogue.key",
    )  # fmt: skip
    async with CaClient(cloud.url, ssl_context=context, trust="t", timeout_s=5) as ca:
        # A TLS 1.3 server may close without an alert: either error names the cause.
        with pytest.raises(
            (ClientCertificateRefused, CertificateProbablyRefused), match="client certificate"
        ):
            await ca.self_view()


# --------------------------------------------------------------------------- CA client


async def test_register_and_mutual_tls_calls(cloud: FakeCloud, tmp_path: Path) -> None:
    loaded = await registered(cloud, tmp_path / "state")
    agent = cloud.agents[loaded.record.agent_id]
    assert agent.host == "dc-01" and agent.serial == loaded.certificate.serial_number
    _, path, body = cloud.requests[-1]
    assert path == "/agents/register"
    assert set(body) == {"csr", "host", "version"}  # a domain: no tenant_id
    async with CaClient(
        loaded.record.ca_url, ssl_context=loaded.mutual_tls(), trust="t", timeout_s=5,
        version="9.9.9", instance_id="i-1",
    ) as ca:  # fmt: skip
        answer = await ca.heartbeat("healthy", "")
        view = await ca.self_view()
    assert answer.renew is False and answer.heartbeat_interval_s == 600
    assert agent.heartbeats == [
        {"version": "9.9.9", "status": "healthy", "detail": "", "instance_id": "i-1"}
    ]
    assert view.status == "active"


async def test_mutual_tls_call_without_certificate(cloud: FakeCloud) -> None:
    async with CaClient(
        cloud.url, ssl_context=server_tls(cloud.material), trust="t", timeout_s=5
    ) as ca:
        with pytest.raises(Exception, match="client_certificate_required"):
            await ca.bootstrap()


async def test_ca_errors_are_typed(cloud: FakeCloud) -> None:
    async with CaClient(
        cloud.url, ssl_context=server_tls(cloud.material), trust="t", timeout_s=5
    ) as ca:
        with pytest.raises(Exception, match=r"Sign in again\. \(invalid_token, HTTP 401\)"):
            await ca.register("not-the-token", b"csr", host="h", version="1")


# --------------------------------------------------------------------------- CLI end to end


async def test_cli_register_status_unregister(cloud: FakeCloud, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    loaded = await registered(cloud, state_dir)
    assert (state_dir / "ca-bundle.pem").read_bytes() == cloud.material.service_ca.read_bytes()

    result = await invoke("status", "--state-dir", str(state_dir), "--json")
    assert result.exit_code == 0, result.output
    document = orjson.loads(result.stdout)
    assert document["cloud"]["reachable"] is True
    assert document["cloud"]["status"] == "inactive"
    assert document["agent_id"] == loaded.record.agent_id

    again = await invoke(
        "register", "--tenant", DOMAIN, "--server", cloud.url,
        "--ca-bundle", str(cloud.material.service_ca), "--state-dir", str(state_dir),
        "--device-code",
    )  # fmt: skip
    assert again.exit_code == 1 and "pta-agent unregister" in again.output

    result = await invoke("unregister", "--state-dir", str(state_dir), "--device-code")
    assert result.exit_code == 0, result.output
    assert "WXYZ-1234" in result.stderr  # the device code message
    assert cloud.agents[loaded.record.agent_id].deleted
    assert list(state_dir.iterdir()) == []


async def test_cli_status_of_a_deleted_agent(cloud: FakeCloud, tmp_path: Path) -> None:
    loaded = await registered(cloud, tmp_path / "state")
    cloud.agents[loaded.record.agent_id].deleted = True
    result = await invoke("status", "--state-dir", str(tmp_path / "state"))
    assert result.exit_code == 1
    assert "no longer accepts this agent" in result.output
    assert "deleted" in result.output


async def test_cli_status_when_the_cloud_is_down(cloud: FakeCloud, tmp_path: Path) -> None:
    await registered(cloud, tmp_path / "state")
    await cloud.stop()
    result = await invoke("status", "--state-dir", str(tmp_path / "state"))
    assert result.exit_code == 1
    assert "unknown" in result.output and "firewall" in result.output


async def test_cli_register_with_a_wrong_bundle(cloud: FakeCloud, tmp_path: Path) -> None:
    result = await invoke(
        "register", "--tenant", DOMAIN, "--server", cloud.url,
        "--ca-bundle", str(cloud.material.stranger_ca), "--state-dir", str(tmp_path / "s"),
        "--username", ADMIN, "--password-stdin", input=f"{ADMIN_PASSWORD}\n",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "not signed by the CA bundle given with --ca-bundle" in result.output
    assert not (tmp_path / "s").exists()
    assert ADMIN_PASSWORD not in result.output


async def test_unregister_when_the_cloud_forgot_the_agent(cloud: FakeCloud, tmp_path: Path) -> None:
    loaded = await registered(cloud, tmp_path / "state")
    del cloud.agents[loaded.record.agent_id]
    result = await invoke(
        "unregister", "--state-dir", str(tmp_path / "state"),
        "--username", ADMIN, "--password-stdin", input=f"{ADMIN_PASSWORD}\n",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "no longer knew" in result.output
