"""The CA client's answer and error handling, without network (agent.cloud)."""

from __future__ import annotations

import datetime as dt

import orjson
import pytest

from agent import cloud
from agent.https import ProtocolError, Response, TimedOut, Unreachable


def _answer(status: int, body: object) -> Response:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return Response(status=status, body=raw, url="https://ca.test/agents/register")


@pytest.mark.parametrize(
    ("code", "status", "cls"),
    [
        ("invalid_request", 400, cloud.InvalidRequest),
        ("csr_rejected", 400, cloud.CsrRefused),
        ("invalid_token", 401, cloud.InvalidToken),
        ("insufficient_role", 403, cloud.InsufficientRole),
        ("tenant_mismatch", 403, cloud.TenantMismatch),
        ("agent_limit_reached", 409, cloud.AgentLimitReached),
        ("client_certificate_required", 401, cloud.ClientCertificateRequired),
        ("certificate_revoked", 401, cloud.CertificateRevoked),
        ("certificate_superseded", 401, cloud.CertificateSuperseded),
        ("agent_not_found", 404, cloud.AgentNotFound),
        ("broker_unavailable", 503, cloud.BrokerUnavailable),
        ("certificate_expired", 401, cloud.CertificateExpired),
        ("renewal_in_progress", 409, cloud.RenewalInProgress),
        ("renewal_replayed", 409, cloud.RenewalReplayed),
        ("renewal_not_due", 409, cloud.RenewalNotDue),
    ],
)
def test_ca_error_codes_become_typed_errors_with_the_cas_message(
    code: str, status: int, cls: type[cloud.CaError]
) -> None:
    error = cloud.ca_error(_answer(status, {"error": code, "message": "Do this and that."}))
    assert type(error) is cls
    assert str(error) == f"Do this and that. ({code}, HTTP {status})"
    assert (error.status, error.ca_code) == (status, code)


def test_without_a_message_the_class_says_what_to_do() -> None:
    error = cloud.ca_error(_answer(409, {"error": "agent_limit_reached"}))
    assert "40 agents" in str(error)


def test_unknown_code_is_a_plain_ca_error() -> None:
    error = cloud.ca_error(_answer(418, {"error": "teapot", "message": "Short and stout."}))
    assert type(error) is cloud.CaError
    assert "Short and stout." in str(error) and "teapot" in str(error)


def test_a_body_that_is_no_ca_error_names_the_status() -> None:
    error = cloud.ca_error(_answer(502, b"<html>Bad Gateway</html>"))
    assert type(error) is cloud.CaError and "HTTP 502" in str(error)
    assert "PTA CA" in str(error)


def test_ca_message_is_made_printable() -> None:
    error = cloud.ca_error(_answer(400, {"error": "invalid_request", "message": "a\x1b[31mb"}))
    assert "\x1b" not in str(error)


def test_agent_gone_groups_the_final_refusals() -> None:
    for cls in (cloud.CertificateRevoked, cloud.CertificateSuperseded, cloud.AgentNotFound):
        assert issubclass(cls, cloud.AgentGone)
        assert "pta-agent register --force" in str(cls(status=401))


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (Unreachable("x"), True),
        (TimedOut("x"), True),
        (cloud.BrokerUnavailable(status=503), True),
        (cloud.CaError(status=500), True),
        (cloud.InvalidToken(status=401), False),
        (cloud.AgentNotFound(status=404), False),
    ],
)
def test_is_transient(error: Exception, transient: bool) -> None:
    assert cloud.is_transient(error) is transient


def test_bootstrap_answer_keeps_the_access_key_out_of_reprs() -> None:
    grant = cloud.BrokerGrant.model_validate(
        {
            "amqp_url": "amqps://broker.test:5671",
            "vhost": "pta",
            "username": "agent-x",
            "access_key": "key-marker-123",
            "queue": "pta.tenant.t",
            "reply_exchange": "pta.replies",
            "publisher": "pta-sts",
            "expires_at": 1_900_000_000,
            "agent_id": "a",
            "tenant_id": "t",
            "heartbeat_interval_s": 600,
            "added_later": True,
        }
    )
    assert "key-marker-123" not in repr(grant) and "key-marker-123" not in str(grant)
    assert grant.access_key.get_secret_value() == "key-marker-123"
    assert grant.expires_at == dt.datetime.fromtimestamp(1_900_000_000, dt.UTC)


def test_invalid_answer_names_fields_not_values() -> None:
    answer = Response(
        status=200,
        body=orjson.dumps({"access_key": "key-marker-456", "amqp_url": 5}),
        url="https://ca.test/agents/bootstrap",
    )
    with pytest.raises(ProtocolError) as caught:
        answer.parse(cloud.BrokerGrant)
    assert "amqp_url" in str(caught.value) and "queue" in str(caught.value)
    assert "key-marker-456" not in str(caught.value)


def test_answers_take_iso_datetimes_and_keep_unknown_fields() -> None:
    iso = cloud.HeartbeatAnswer.model_validate({"renew": True})
    assert iso.renew and iso.heartbeat_interval_s is None
    view = cloud.AgentView.model_validate(
        {"status": "active", "last_heartbeat_at": "2025-01-01T00:00:00Z", "host": "h"}
    )
    assert view.last_heartbeat_at == dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    assert view.model_dump(mode="json")["host"] == "h"  # unknown fields are kept
