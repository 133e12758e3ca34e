"""Admin sign-in pieces without network: OAuth error rendering, device code polling
decisions, and secrets kept out of reprs and messages."""

from __future__ import annotations

import orjson
import pytest

from agent.https import Response
from agent.signin import (
    AccessToken,
    DeviceCode,
    DeviceCodeDeclined,
    DeviceCodeExpired,
    OAuthError,
    PasswordLogin,
    _oauth_error,
    next_poll_interval,
    render_oauth_error,
)


@pytest.mark.parametrize(
    ("error", "description", "codes", "first_line", "hint"),
    [
        (
            "invalid_grant",
            "AADSTS50126: Error validating credentials due to invalid username or "
            "password.\r\nTrace ID: 1\r\nCorrelation ID: 2\r\nTimestamp: 3",
            (50126,),
            "AADSTS50126: Error validating credentials due to invalid username or password.",
            "username and password",
        ),
        (
            "invalid_grant",
            "The account is locked.",
            (50053,),
            "AADSTS50053: The account is locked.",
            "locked",
        ),
        ("invalid_request", "AADSTS90002: Tenant 'nope' not found.", (), "AADSTS90002: "
         "Tenant 'nope' not found.", "--tenant"),
        ("invalid_grant", "AADSTS50076: MFA required.", (50076,), "AADSTS50076: MFA required.",
         "--device-code"),
        ("invalid_grant", "AADSTS80001: No agent.", (80001,), "AADSTS80001: No agent.",
         "cloud-only admin"),
        ("unsupported_grant_type", "", (), "unsupported_grant_type", "--device-code"),
        ("something_new", "Odd.", (), "Odd.", "Check --tenant"),
    ],
)  # fmt: skip
def test_oauth_errors_read_as_aadsts_code_and_what_to_do(
    error: str, description: str, codes: tuple[int, ...], first_line: str, hint: str
) -> None:
    rendered = render_oauth_error(error, description, codes)
    first, second = rendered.split("\n")
    assert first == first_line
    assert hint in second
    assert "Trace ID" not in rendered


def test_control_characters_from_the_server_are_not_printed() -> None:
    rendered = render_oauth_error("invalid_grant", "AADSTS50126: bad\x1b[2J\x07 one", (50126,))
    assert "\x1b" not in rendered and "\x07" not in rendered


def test_oauth_error_is_parsed_from_the_entra_shape() -> None:
    body = {
        "error": "invalid_grant",
        "error_description": "AADSTS50126: Error validating credentials.",
        "error_codes": [50126],
        "timestamp": "2025-01-01 00:00:00Z",
        "trace_id": "t",
        "correlation_id": "c",
    }
    error = _oauth_error(Response(status=400, body=orjson.dumps(body), url="https://sts/x"))
    assert (error.error, error.codes, error.status) == ("invalid_grant", (50126,), 400)
    assert str(error).startswith("AADSTS50126: Error validating credentials.")


@pytest.mark.parametrize("body", [b"<html>bad gateway</html>", b"{}", b"[1]", b""])
def test_a_body_that_is_no_oauth_error_still_gives_a_clear_error(body: bytes) -> None:
    error = _oauth_error(Response(status=502, body=body, url="https://sts/x"))
    assert isinstance(error, OAuthError)
    assert error.error == "server_error"
    assert "HTTP 502" in str(error)


def test_polling_continues_while_pending_and_slows_down_when_asked() -> None:
    assert next_poll_interval("authorization_pending", 5.0) == 5.0
    assert next_poll_interval("slow_down", 5.0) == 10.0  # RFC 8628 section 3.5: +5 s
    assert next_poll_interval("slow_down", 10.0) == 15.0


@pytest.mark.parametrize("error", ["expired_token", "code_expired"])
def test_polling_stops_when_the_code_expired(error: str) -> None:
    with pytest.raises(DeviceCodeExpired, match="run the command again"):
        next_poll_interval(error, 5.0)


@pytest.mark.parametrize("error", ["access_denied", "authorization_declined"])
def test_polling_stops_when_the_user_declined(error: str) -> None:
    with pytest.raises(DeviceCodeDeclined):
        next_poll_interval(error, 5.0)


def test_other_polling_errors_are_left_to_the_caller() -> None:
    assert next_poll_interval("invalid_grant", 5.0) is None


def test_secrets_are_not_in_reprs() -> None:
    assert "pa55-marker" not in repr(PasswordLogin(username="admin", password="pa55-marker"))
    assert "tok-marker" not in repr(AccessToken(value="tok-marker", expires_in_s=3600))
    device = DeviceCode(
        device_code="dev-marker", user_code="ABCD", verification_uri="https://sts/device",
        expires_in_s=900, interval_s=5, message="m",
    )  # fmt: skip
    assert "dev-marker" not in repr(device)
