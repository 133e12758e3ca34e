"""The CA's edge: request bodies, error identities, the error middleware, agent status and
renewal, broker permissions, settings (no network)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from pydantic import ValidationError

from ca import errors
from ca.app import error_middleware
from ca.bodies import HeartbeatRequest, RegisterRequest, decode, is_canonical_uuid
from ca.bootstrap import agent_status, new_access_key
from ca.broker_admin import agent_permissions
from ca.queries import AgentRecord
from ca.renewal import should_renew
from ca.settings import Settings

# -- bodies ------------------------------------------------------------------------------------


def test_register_body_accepts_the_contract() -> None:
    body = decode(
        b'{"csr": "x", "host": "dc1.contoso.test", "version": "1.0", "tenant_id": null}',
        RegisterRequest,
    )
    assert (body.host, body.version, body.tenant_id) == ("dc1.contoso.test", "1.0", None)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[]",
        b'{"csr": "x", "host": "h"}',
        b'{"csr": "x", "host": "", "version": "1"}',
        b'{"csr": "x", "host": "h", "version": "1", "admin": true}',
        b'{"csr": 1, "host": "h", "version": "1"}',
        b'{"csr": "x", "host": "h\\u0000", "version": "1"}',
        b'{"csr": "x", "host": "h", "version": "1\\u001b[31m"}',
        b'{"csr": "x", "host": "h", "version": "1"} trailing',
        b"\xff\xfe",
    ],
)
def test_register_body_refusals(raw: bytes) -> None:
    with pytest.raises(errors.InvalidRequest):
        decode(raw, RegisterRequest)


def test_validation_messages_name_the_field_not_the_value() -> None:
    with pytest.raises(errors.InvalidRequest) as caught:
        decode(b'{"csr": "x", "host": "' + b"s3cr3t" * 50 + b'", "version": "1"}', RegisterRequest)
    assert "$.host" in caught.value.message and "s3cr3t" not in caught.value.message


def test_heartbeat_body() -> None:
    body = decode(b'{"version": "1", "status": "healthy"}', HeartbeatRequest)
    assert body.detail == ""
    with pytest.raises(errors.InvalidRequest):
        decode(b'{"version": "1", "status": "Healthy!"}', HeartbeatRequest)


def test_canonical_uuid() -> None:
    assert is_canonical_uuid("0b7d6f8e-2d1c-4e5f-9a8b-7c6d5e4f3a2b")
    for value in ("0B7D6F8E-2D1C-4E5F-9A8B-7C6D5E4F3A2B", "{0b7d6f8e-2d1c-4e5f-9a8b-7c6d5e4f3a2b}",
                  "0b7d6f8e2d1c4e5f9a8b7c6d5e4f3a2b", "contoso", ""):  # fmt: skip
        assert not is_canonical_uuid(value)


# -- errors ------------------------------------------------------------------------------------

CONTRACT = {
    errors.InvalidRequest: (400, "invalid_request"),
    errors.CsrRejected: (400, "csr_rejected"),
    errors.InvalidToken: (401, "invalid_token"),
    errors.InsufficientRole: (403, "insufficient_role"),
    errors.TenantMismatch: (403, "tenant_mismatch"),
    errors.AgentLimitReached: (409, "agent_limit_reached"),
    errors.ClientCertificateRequired: (401, "client_certificate_required"),
    errors.CertificateRevoked: (401, "certificate_revoked"),
    errors.CertificateSuperseded: (401, "certificate_superseded"),
    errors.AgentNotFound: (404, "agent_not_found"),
    errors.AgentUnknown: (401, "agent_not_found"),
    errors.BrokerUnavailable: (503, "broker_unavailable"),
    errors.CertificateExpired: (401, "certificate_expired"),
    errors.RenewalReplayed: (409, "renewal_replayed"),
    errors.RenewalNotDue: (409, "renewal_not_due"),
}


@pytest.mark.parametrize("error", list(CONTRACT))
def test_error_identities_follow_the_contract(error: type[errors.CaError]) -> None:
    assert (error.status, error.code) == CONTRACT[error]
    assert error().message == " ".join((error.__doc__ or "").split())


def _body(response: web.Response) -> Any:
    assert isinstance(response.body, bytes)
    return msgspec.json.decode(response.body)


async def _render(exc: BaseException, headers: dict[str, str] | None = None) -> web.Response:
    async def handler(request: web.Request) -> web.Response:
        raise exc

    request = make_mocked_request("POST", "/agents/register", headers=headers or {})
    response = await error_middleware(request, handler)
    assert isinstance(response, web.Response)
    return response


async def test_middleware_renders_errors_without_the_detail() -> None:
    response = await _render(errors.BrokerUnavailable(detail="PUT users: 500 secret-ish"))
    assert response.status == 503
    assert response.content_type == "application/json"
    assert _body(response) == {
        "error": "broker_unavailable",
        "message": "The message broker could not be reached; try again shortly.",
    }
    assert response.headers["Cache-Control"] == "no-store"


async def test_middleware_echoes_a_uuid_correlation_id_only() -> None:
    cid = "5f0c4a6e-8a55-4a55-9a55-0c4a6e8a5555"
    response = await _render(errors.InvalidRequest(), {"client-request-id": cid})
    assert response.headers["client-request-id"] == cid
    response = await _render(errors.InvalidRequest(), {"client-request-id": "x\r\ny"})
    assert is_canonical_uuid(response.headers["client-request-id"])


async def test_middleware_hides_unexpected_faults() -> None:
    response = await _render(RuntimeError("db password is hunter2"))
    assert response.status == 500
    assert "hunter2" not in str(_body(response))


async def test_middleware_maps_aiohttp_errors() -> None:
    response = await _render(web.HTTPRequestEntityTooLarge(max_size=10, actual_size=20))
    assert response.status == 413
    assert _body(response)["error"] == "invalid_request"


# -- agent status, renewal, access keys ----------------------------------------------------------

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def _agent(last_heartbeat_at: dt.datetime | None) -> AgentRecord:
    return AgentRecord(
        id="a", tenant_id="t", host="h", version="1", kid="k", cert_serial="1",
        cert_not_after=NOW, registered_at=NOW, last_heartbeat_at=last_heartbeat_at,
        last_bootstrap_at=None, reported_status="", status_detail="", broker_user=None,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("silent", "status"),
    [(None, "inactive"), (0, "active"), (1200, "active"), (1201, "inactive")],
)
def test_agent_status_is_two_intervals(silent: int | None, status: str) -> None:
    last = None if silent is None else NOW - dt.timedelta(seconds=silent)
    assert agent_status(_agent(last), now=NOW, heartbeat_interval_s=600) == status


def test_renewal_window() -> None:
    not_after = NOW + dt.timedelta(days=30)
    assert should_renew(not_after, now=NOW, renew_before_days=30)
    assert not should_renew(not_after, now=NOW - dt.timedelta(seconds=1), renew_before_days=30)


def test_access_keys_are_256_random_bits() -> None:
    keys = {new_access_key() for _ in range(100)}
    assert len(keys) == 100 and all(len(k) == 43 for k in keys)


# -- broker permissions --------------------------------------------------------------------------


def test_agent_permissions_reach_only_the_own_tenant() -> None:
    tenant = "0b7d6f8e-2d1c-4e5f-9a8b-7c6d5e4f3a2b"
    assert agent_permissions(tenant) == {
        "configure": "^$",
        "write": r"^pta\.replies$",
        "read": rf"^pta\.tenant\.{tenant}$",
    }
    for hostile in (".*", "0b7d6f8e-2d1c-4e5f-9a8b-7c6d5e4f3a2b|.*", "x$|^pta"):
        with pytest.raises(ValueError):
            agent_permissions(hostile)


# -- settings ----------------------------------------------------------------------------------


def _files(tmp_path: Path) -> dict[str, Any]:
    names = ("tls_cert_file", "tls_key_file", "pta_ca_cert_file", "pta_ca_key_file",
             "service_ca_cert_file", "service_ca_key_file", "sts_ca_bundle")  # fmt: skip
    files = {}
    for name in names:
        (tmp_path / name).write_text("x")
        files[name] = tmp_path / name
    return {
        **files,
        "postgres_dsn": "postgresql://u:s3cret-pg@127.0.0.1/db",
        "sts_url": "https://sts.test/",
        "amqp_management_url": "http://127.0.0.1:15672",
        "amqp_admin_user": "admin",
        "amqp_admin_password": "s3cret-amqp",
        "agent_amqp_url": "amqp://127.0.0.1:5672/pta",
    }


def test_settings_defaults_and_normalisation(tmp_path: Path) -> None:
    settings = Settings(**_files(tmp_path))
    assert settings.sts_url == "https://sts.test"
    assert (settings.agent_cert_lifetime_days, settings.access_key_lifetime_s) == (180, 86_400)
    assert (settings.heartbeat_interval_s, settings.max_agents_per_tenant) == (600, 40)
    assert settings.renew_before_days == 30
    assert settings.crl_url == f"http://127.0.0.1:{settings.crl_port}"
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings)
    with pytest.raises(ValidationError):
        settings.port = 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("agent_amqp_url", "amqp://agent:secret@127.0.0.1/pta"),
        ("agent_amqp_url", "http://127.0.0.1/pta"),
        ("sts_url", "http://sts.test"),
        ("tls_cert_file", "/nonexistent/cert.pem"),
        ("max_agents_per_tenant", 0),
        ("port", 70000),
    ],
)
def test_bad_settings_name_the_field(tmp_path: Path, field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(**{**_files(tmp_path), field: value})
    assert field in str(caught.value)


def test_settings_come_from_the_prefixed_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = _files(tmp_path)
    for name, value in values.items():
        monkeypatch.setenv(f"PTA_CA_{name.upper()}", str(value))
    monkeypatch.setenv("PTA_CA_MAX_AGENTS_PER_TENANT", "7")
    settings = Settings()  # type: ignore[call-arg]
    assert settings.max_agents_per_tenant == 7
