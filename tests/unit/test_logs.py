"""Redaction: secret-named keys never reach the log output."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest
import structlog

from common import logs


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """`logs.configure` binds sys.stderr of the moment (pytest's capture, closed after the
    test) into structlog and the root logger: leave neither behind for later tests."""
    root = logging.getLogger()
    handlers, level, hook = list(root.handlers), root.level, sys.excepthook
    yield
    structlog.reset_defaults()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    sys.excepthook = hook
    logging.captureWarnings(False)


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


@pytest.mark.parametrize(
    "value", ["alice@contoso.test", "a.b-c_d+e@sub.contoso.test", "o'neil@fabrikam.test"]
)
def test_a_user_name_is_logged(value: str) -> None:
    event = logs.mask_typed_usernames(None, "info", {"username": value})
    assert event == {"username": value}


@pytest.mark.parametrize(
    "value",
    ["Summer2024!", "pass word@x.test", "alice", "alice@contoso", "@contoso.test",
     "ålice@contoso.test", "a" * 250 + "@contoso.test", "alice@contoso.test\n"],
)  # fmt: skip
def test_anything_else_in_a_username_field_is_logged_by_its_length(value: str) -> None:
    event = logs.mask_typed_usernames(None, "info", {"username": value, "login_hint": value})
    assert event["username"] == event["login_hint"] == logs.REDACTED
    assert event["username_chars"] == event["login_hint_chars"] == len(value)


def _configured_stderr(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    lines = capsys.readouterr().err.splitlines()
    return [json.loads(line) for line in lines]


def test_stdlib_records_are_json_lines_with_the_traceback_inside(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure(json=True, service="test")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("asyncio").exception("Task failed\nsecond line")
    (line,) = _configured_stderr(capsys)
    assert line["event"] == "Task failed\nsecond line" and line["logger"] == "asyncio"
    assert "ValueError: boom" in str(line["exception"]) and line["service"] == "test"


def test_a_malformed_request_is_one_warning_without_the_clients_bytes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from aiohttp.http_exceptions import BadHttpMessage

    logs.configure(json=True)
    try:
        raise BadHttpMessage("Invalid header: secret-bytes")
    except BadHttpMessage:
        logging.getLogger("aiohttp.server").exception("Error handling request from %s", "x")
    (line,) = _configured_stderr(capsys)
    assert line["event"] == "http_request_malformed" and line["level"] == "warning"
    assert line["error"] == "BadHttpMessage" and "exception" not in line
    assert "secret-bytes" not in json.dumps(line)
