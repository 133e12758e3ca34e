"""STS settings from PTA_STS_* variables; errors name the variable (sts.settings)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from sts.settings import StsSettings, settings_error_message


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    monkeypatch.setenv("PTA_STS_PUBLIC_URL", "https://sts.example.com:8443/")
    monkeypatch.setenv("PTA_STS_POSTGRES_DSN", "postgresql://pta@127.0.0.1:5/pta")
    monkeypatch.setenv("PTA_STS_SIGNING_KEY_DIR", str(tmp_path))
    return monkeypatch


def test_defaults_and_normalisation(env: pytest.MonkeyPatch) -> None:
    env.setenv("PTA_STS_LOG_LEVEL", "debug")
    settings = StsSettings()  # type: ignore[call-arg]
    assert settings.public_url == "https://sts.example.com:8443"
    assert settings.is_https
    assert (settings.host, settings.port) == ("127.0.0.1", 27117)
    assert settings.access_token_lifetime_s == 3600
    assert settings.device_code_lifetime_s == 900 and settings.device_poll_interval_s == 5
    assert settings.log_level == "DEBUG"
    assert settings.tls_cert_file is None
    with pytest.raises(ValidationError):
        settings.port = 1  # frozen


def message_for(**env: str) -> str:
    try:
        StsSettings(**env)  # type: ignore[arg-type]
    except ValidationError as exc:
        return settings_error_message(exc)
    raise AssertionError("expected a validation error")


def test_missing_settings_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PTA_STS_PUBLIC_URL", "PTA_STS_POSTGRES_DSN", "PTA_STS_SIGNING_KEY_DIR"):
        monkeypatch.delenv(name, raising=False)
    message = message_for()
    for name in ("PTA_STS_PUBLIC_URL", "PTA_STS_POSTGRES_DSN", "PTA_STS_SIGNING_KEY_DIR"):
        assert f"{name}: is required" in message


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("PTA_STS_PUBLIC_URL", "sts.example.com", "PTA_STS_PUBLIC_URL: must be an absolute"),
        ("PTA_STS_PUBLIC_URL", "https://h/?q=1", "PTA_STS_PUBLIC_URL: must have no query"),
        ("PTA_STS_SIGNING_KEY_DIR", "/nonexistent/keys", "PTA_STS_SIGNING_KEY_DIR: /nonexistent"),
        ("PTA_STS_ACCESS_TOKEN_LIFETIME_S", "0", "PTA_STS_ACCESS_TOKEN_LIFETIME_S"),
        ("PTA_STS_DEVICE_POLL_INTERVAL_S", "0", "PTA_STS_DEVICE_POLL_INTERVAL_S"),
        ("PTA_STS_LOG_LEVEL", "chatty", "PTA_STS_LOG_LEVEL"),
        ("PTA_STS_TLS_CERT_FILE", "/x/cert.pem", "set both PTA_STS_TLS_CERT_FILE"),
    ],
)
def test_bad_values_are_named(
    env: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    env.setenv(name, value)
    assert expected in message_for()
