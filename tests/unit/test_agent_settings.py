"""Agent settings (agent.settings): env prefix, defaults, frozen, clear errors."""

from __future__ import annotations

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
