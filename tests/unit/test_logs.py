"""Redaction: secret-named keys never reach the log output."""

from __future__ import annotations

import io
import json

import pytest
import structlog

from common import logs


@pytest.mark.parametrize(
    "key",
    ["password", "reply_key", "content_key", "access_key", "access_token", "refresh_token",
     "client_secret", "private_key", "authorization", "code_verifier", "device_code"],
)  # fmt: skip
def test_secret_keys_are_redacted(key: str) -> None:
    event = logs.redact(None, "info", {"event": "x", key: "s3cr3t-marker"})
    assert event[key] == logs.REDACTED


@pytest.mark.parametrize("key", ["username", "tenant_id", "kid", "correlation_id", "status"])
def test_ordinary_keys_are_kept(key: str) -> None:
    assert logs.redact(None, "info", {key: "v"})[key] == "v"


def test_configured_json_output_never_contains_the_secret(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure(json=True, service="test")
    buf = io.StringIO()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=buf))
    structlog.contextvars.bind_contextvars(correlation_id="c-1")
    try:
        structlog.get_logger().info("password_validated", password="marker-123", user="alice")
    finally:
        structlog.contextvars.clear_contextvars()
    line = json.loads(buf.getvalue())
    assert "marker-123" not in buf.getvalue()
    assert line["correlation_id"] == "c-1" and line["service"] == "test"
    assert line["event"] == "password_validated"


def test_a_dataclass_with_a_hidden_secret_stays_hidden() -> None:
    from dataclasses import dataclass, field

    @dataclass(frozen=True)
    class Login:
        username: str
        password: str = field(repr=False)

    logs.configure(json=True)
    buf = io.StringIO()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=buf))
    structlog.get_logger().info("sign_in_attempt", login=Login("alice", "marker-456"))
    assert "marker-456" not in buf.getvalue()
    assert "alice" in buf.getvalue()
