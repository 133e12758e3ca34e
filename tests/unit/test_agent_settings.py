"""Agent settings (agent.settings): env prefix, defaults, frozen, clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.settings import DEFAULT_STATE_DIR, SettingsInvalid, load_settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("STATE_DIR", "HEARTBEAT_INTERVAL_S", "LOG_LEVEL", "PREFETCH"):
        monkeypatch.delenv(f"PTA_AGENT_{name}", raising=False)
    settings = load_settings()
    assert settings.state_dir == DEFAULT_STATE_DIR
    assert settings.heartbeat_interval_s is None  # the CA's interval from bootstrap
    assert settings.log_level == "INFO"
    assert settings.drain_timeout_s > 0 and settings.http_timeout_s > 0


def test_environment_with_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PTA_AGENT_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("PTA_AGENT_HEARTBEAT_INTERVAL_S", "30")
    monkeypatch.setenv("PTA_AGENT_LOG_LEVEL", "debug")
    monkeypatch.setenv("PTA_AGENT_PREFETCH", "4")
    settings = load_settings()
    assert settings.state_dir == tmp_path
    assert settings.heartbeat_interval_s == 30.0
    assert settings.log_level == "DEBUG"
    assert settings.prefetch == 4


def test_options_win_over_environment_and_none_means_not_given(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PTA_AGENT_STATE_DIR", "/from/env")
    assert load_settings(state_dir=tmp_path).state_dir == tmp_path
    assert load_settings(state_dir=None).state_dir == Path("/from/env")


def test_register_options_in_the_environment_are_not_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PTA_AGENT_SERVER", "https://ca.test")
    monkeypatch.setenv("PTA_AGENT_CA_BUNDLE", "/etc/pta/ca.pem")
    load_settings()  # no error: they are click options of `register`


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.prefetch = 2


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PTA_AGENT_PREFETCH", "0"),
        ("PTA_AGENT_HEARTBEAT_INTERVAL_S", "-1"),
        ("PTA_AGENT_LOG_LEVEL", "chatty"),
        ("PTA_AGENT_DRAIN_TIMEOUT_S", "soon"),
    ],
)
def test_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsInvalid) as caught:
        load_settings()
    assert name in str(caught.value)


# --------------------------------------------------------------------------- directory

SERVICE_PASSWORD = "svc-Marker-93ab"
DIRECTORY_ENV = {
    "PTA_AGENT_LDAP_URL": "ldaps://dc1.corp.test:636",
    "PTA_AGENT_LDAP_BIND_DN": "cn=pta-reader,dc=corp,dc=test",
    "PTA_AGENT_LDAP_BIND_PASSWORD": SERVICE_PASSWORD,
    "PTA_AGENT_LDAP_BASE_DN": "ou=people,dc=corp,dc=test",
    "PTA_AGENT_LDAP_DOMAIN": "Corp.Test",
}


@pytest.fixture
def ldap_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A complete, valid directory environment (each test changes one thing)."""
    for name in list(os.environ):
        if name.startswith("PTA_AGENT_"):
            monkeypatch.delenv(name)
    for name, value in DIRECTORY_ENV.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def _invalid(**overrides: object) -> str:
    with pytest.raises(SettingsInvalid) as caught:
        load_settings(**overrides).directory_settings()
    message = str(caught.value)
    assert SERVICE_PASSWORD not in message  # the password is never part of a message
    return message


def test_directory_settings_from_the_environment(ldap_env: pytest.MonkeyPatch) -> None:
    ldap_env.setenv("PTA_AGENT_LDAP_LOGIN_ATTRIBUTE", "userprincipalname")
    ldap_env.setenv("PTA_AGENT_LDAP_KIND", "AD")
    ldap_env.setenv("PTA_AGENT_LDAP_TIMEOUT_S", "2.5")
    ldap_env.setenv("PTA_AGENT_PREFETCH", "4")
    directory = load_settings().directory_settings()
    assert directory.url == "ldaps://dc1.corp.test:636"
    assert directory.bind_dn == "cn=pta-reader,dc=corp,dc=test"
    assert directory.bind_password == SERVICE_PASSWORD
    assert directory.base_dn == "ou=people,dc=corp,dc=test"
    assert directory.domain == "corp.test"  # lowercased: usernames are compared lowercase
    assert directory.login_attribute == "userPrincipalName"  # attribute names: any case
    assert directory.kind == "ad"
    assert directory.timeout_s == 2.5
    assert directory.pool_size == 4  # default min(8, prefetch)
    assert SERVICE_PASSWORD not in repr(directory) and SERVICE_PASSWORD not in repr(load_settings())


def test_directory_defaults(ldap_env: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    directory = settings.directory_settings()
    assert directory.login_attribute == "uid" and directory.kind == "openldap"
    assert directory.pool_size == 8 and settings.prefetch == 16
    assert directory.ca_file is None and directory.timeout_s == 5.0
    assert settings.sync_interval_s == 1800


def test_directory_is_not_needed_to_build_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("PTA_AGENT_"):
            monkeypatch.delenv(name)
    settings = load_settings()  # register, status, unregister need no directory
    message = _invalid()
    for name in (
        "PTA_AGENT_LDAP_URL",
        "PTA_AGENT_LDAP_BIND_DN",
        "PTA_AGENT_LDAP_BASE_DN",
        "PTA_AGENT_LDAP_DOMAIN",
        "PTA_AGENT_LDAP_BIND_PASSWORD_FILE or PTA_AGENT_LDAP_BIND_PASSWORD",
    ):
        assert name in message
    assert settings.ldap_url is None


def test_password_and_password_file_are_exclusive(
    ldap_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = tmp_path / "ldap-password"
    secret.write_text(SERVICE_PASSWORD + "\n")
    ldap_env.setenv("PTA_AGENT_LDAP_BIND_PASSWORD_FILE", str(secret))
    assert "set exactly one" in _invalid()
    ldap_env.delenv("PTA_AGENT_LDAP_BIND_PASSWORD")
    directory = load_settings().directory_settings()
    assert directory.bind_password == SERVICE_PASSWORD  # one trailing newline dropped


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"pw\r\n", "pw"), (b"pw", "pw"), (b"pw \n\n", "pw \n"), (b"p\xc3\xa4ss\n", "p\u00e4ss")],
)
def test_password_file_content(
    ldap_env: pytest.MonkeyPatch, tmp_path: Path, content: bytes, expected: str
) -> None:
    secret = tmp_path / "pw"
    secret.write_bytes(content)
    ldap_env.delenv("PTA_AGENT_LDAP_BIND_PASSWORD")
    ldap_env.setenv("PTA_AGENT_LDAP_BIND_PASSWORD_FILE", str(secret))
    assert load_settings().directory_settings().bind_password == expected


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "cannot read"),
        (b"\n", "is empty"),
        (b"\xff\xfe", "not UTF-8"),
        (b"x" * 5000, "too large"),
    ],
)
def test_unusable_password_file_names_the_variable(
    ldap_env: pytest.MonkeyPatch, tmp_path: Path, content: bytes | None, reason: str
) -> None:
    secret = tmp_path / "pw"
    if content is not None:
        secret.write_bytes(content)
    ldap_env.delenv("PTA_AGENT_LDAP_BIND_PASSWORD")
    ldap_env.setenv("PTA_AGENT_LDAP_BIND_PASSWORD_FILE", str(secret))
    message = _invalid()
    assert "PTA_AGENT_LDAP_BIND_PASSWORD_FILE" in message and reason in message


@pytest.mark.parametrize(
    ("name", "value", "hint"),
    [
        ("PTA_AGENT_LDAP_URL", "http://dc1.corp.test", "scheme"),
        ("PTA_AGENT_LDAP_URL", "ldap://dc1:99999", "not a valid LDAP URL"),
        ("PTA_AGENT_LDAP_DOMAIN", "@corp.test", "UPN suffix"),
        ("PTA_AGENT_LDAP_CA_FILE", "/nonexistent/ca.pem", "not a readable file"),
        ("PTA_AGENT_LDAP_BASE_DN", "  ", "set the DN"),
    ],
)
def test_bad_directory_value_names_the_variable(
    ldap_env: pytest.MonkeyPatch, name: str, value: str, hint: str
) -> None:
    ldap_env.setenv(name, value)
    message = _invalid()
    assert name in message and hint in message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PTA_AGENT_LDAP_LOGIN_ATTRIBUTE", "sAMAccountName"),
        ("PTA_AGENT_LDAP_KIND", "novell"),
        ("PTA_AGENT_LDAP_POOL_SIZE", "0"),
        ("PTA_AGENT_LDAP_POOL_SIZE", "65"),
        ("PTA_AGENT_LDAP_TIMEOUT_S", "0"),
        ("PTA_AGENT_LDAP_TIMEOUT_S", "301"),
        ("PTA_AGENT_SYNC_INTERVAL_S", "-1"),
    ],
)
def test_bad_typed_directory_value_fails_at_load(
    ldap_env: pytest.MonkeyPatch, name: str, value: str
) -> None:
    ldap_env.setenv(name, value)
    with pytest.raises(SettingsInvalid) as caught:
        load_settings()
    assert name in str(caught.value) and SERVICE_PASSWORD not in str(caught.value)


def test_pool_size_may_not_exceed_the_prefetch(ldap_env: pytest.MonkeyPatch) -> None:
    ldap_env.setenv("PTA_AGENT_PREFETCH", "4")
    ldap_env.setenv("PTA_AGENT_LDAP_POOL_SIZE", "8")
    message = _invalid()
    assert "PTA_AGENT_LDAP_POOL_SIZE" in message and "PTA_AGENT_PREFETCH" in message
    ldap_env.setenv("PTA_AGENT_LDAP_POOL_SIZE", "4")
    assert load_settings().directory_settings().pool_size == 4


def test_sync_interval_zero_turns_the_sync_off(ldap_env: pytest.MonkeyPatch) -> None:
    ldap_env.setenv("PTA_AGENT_SYNC_INTERVAL_S", "0")
    assert load_settings().sync_interval_s == 0
