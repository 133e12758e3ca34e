"""agent.ldap_verdicts, without I/O: username shapes and bind-result mapping.

The OpenLDAP cases are also checked against the real slapd (tests/integration/
test_agent_ldap_directory.py); the Active Directory ``data XXX`` codes are pinned here from
the messages Samba AD sends (docs/servers.md), since the test stack runs no AD.
"""

from __future__ import annotations

from typing import Any

import pytest

from agent.directory import (
    REJECTED_DETAIL,
    DirectoryError,
    DirectoryMisconfigured,
    DirectoryTimeout,
    DirectoryUnavailable,
    Verdict,
)
from agent.ldap_verdicts import (
    MAX_USERNAME_CHARS,
    ad_verdict,
    locked_verdict,
    login_value,
    openldap_verdict,
)
from common.ppolicy import PPOLICY_OID
from common.wire import Status

UID = {"domain": "contoso.test", "login_attribute": "uid"}


def _result(code: int, control: bytes | None = None, message: str = "") -> dict[str, Any]:
    result: dict[str, Any] = {"result": code, "description": f"code{code}", "message": message}
    if control is not None:
        result["controls"] = {PPOLICY_OID: {"value": control, "criticality": False}}
    return result


EMPTY = b"\x30\x00"
EXPIRED = b"\x30\x03\x81\x01\x00"
LOCKED = b"\x30\x03\x81\x01\x01"
RESET = b"\x30\x03\x81\x01\x02"
MOD_NOT_ALLOWED = b"\x30\x03\x81\x01\x03"
EXPIRES_IN_A_DAY = b"\x30\x07\xa0\x05\x80\x03\x01\x51\x80"  # timeBeforeExpiration 86400
GRACE_2 = b"\x30\x05\xa0\x03\x81\x01\x02"


@pytest.mark.parametrize(
    ("code", "control", "status"),
    [
        (0, None, Status.SUCCESS),
        (0, EMPTY, Status.SUCCESS),
        (0, EXPIRES_IN_A_DAY, Status.SUCCESS),
        (0, RESET, Status.MUST_CHANGE_PASSWORD),  # slapd: success + changeAfterReset
        (0, GRACE_2, Status.PASSWORD_EXPIRED),
        (49, EMPTY, Status.INVALID_CREDENTIALS),
        (49, None, Status.INVALID_CREDENTIALS),
        (49, EXPIRED, Status.PASSWORD_EXPIRED),
        (49, RESET, Status.MUST_CHANGE_PASSWORD),
        (32, None, Status.INVALID_CREDENTIALS),  # entry deleted between search and bind
    ],
)
def test_openldap_mapping(code: int, control: bytes | None, status: Status) -> None:
    verdict = openldap_verdict(_result(code, control))
    assert verdict is not None and verdict.status is status


def test_openldap_success_tells_the_days_left() -> None:
    assert openldap_verdict(_result(0, EXPIRES_IN_A_DAY)) == Verdict(
        Status.SUCCESS, "password expires in 1.0 days"
    )


def test_openldap_account_locked_asks_for_the_lock_time() -> None:
    """Locked and disabled answer alike; None tells the caller to read the entry."""
    assert openldap_verdict(_result(49, LOCKED)) is None


def test_wrong_password_and_unknown_user_share_one_detail() -> None:
    verdict = openldap_verdict(_result(49, EMPTY))
    assert verdict == Verdict(Status.INVALID_CREDENTIALS, REJECTED_DETAIL)


@pytest.mark.parametrize(
    ("result", "error"),
    [
        (_result(0, b"\x31\x00"), DirectoryError),  # malformed control: fail closed
        (_result(0, MOD_NOT_ALLOWED), DirectoryError),
        (_result(51), DirectoryUnavailable),
        (_result(52), DirectoryUnavailable),
        (_result(3), DirectoryTimeout),
        (_result(13), DirectoryMisconfigured),
        (_result(80), DirectoryError),
    ],
)
def test_openldap_faults_raise(result: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        openldap_verdict(result)


def _ad(sub: str) -> dict[str, Any]:
    message = f"80090308: LdapErr: DSID-0C09041C, comment: AcceptSecurityContext error, data {sub}, v4563\x00"  # noqa: E501
    return _result(49, message=message)


@pytest.mark.parametrize(
    ("sub", "status"),
    [
        ("52e", Status.INVALID_CREDENTIALS),
        ("525", Status.INVALID_CREDENTIALS),
        ("530", Status.LOGON_HOURS),
        ("531", Status.LOGON_HOURS),
        ("532", Status.PASSWORD_EXPIRED),
        ("533", Status.ACCOUNT_DISABLED),
        ("701", Status.ACCOUNT_EXPIRED),
        ("773", Status.MUST_CHANGE_PASSWORD),
        ("775", Status.ACCOUNT_LOCKED),
        ("52E", Status.INVALID_CREDENTIALS),
        ("999", Status.INVALID_CREDENTIALS),  # unknown code: fail closed
    ],
)
def test_ad_data_codes(sub: str, status: Status) -> None:
    assert ad_verdict(_ad(sub)).status is status


def test_ad_success_and_bare_49() -> None:
    assert ad_verdict(_result(0)).status is Status.SUCCESS
    assert ad_verdict(_result(49)) == Verdict(Status.INVALID_CREDENTIALS, REJECTED_DETAIL)
    assert ad_verdict(_ad("52e")) == Verdict(Status.INVALID_CREDENTIALS, REJECTED_DETAIL)


@pytest.mark.parametrize(
    ("username", "value"),
    [
        ("alice@contoso.test", "alice"),
        ("alice@CONTOSO.TEST", "alice"),
        ("al*ce@contoso.test", "al*ce"),  # escaped later, once, by the filter builder
        ("ålice@contoso.test", "ålice"),
    ],
)
def test_login_value_for_uid(username: str, value: str) -> None:
    assert login_value(username, **UID) == value


def test_login_value_for_mail_is_the_whole_username() -> None:
    mail = login_value("alice@contoso.test", domain="contoso.test", login_attribute="mail")
    assert mail == "alice@contoso.test"


@pytest.mark.parametrize(
    "username",
    [
        "",
        "alice",
        "@contoso.test",
        "alice@",
        "alice@fabrikam.test",
        "a@b@contoso.test",
        "alice @contoso.test",
        "alice\x00@contoso.test",
        "alice\u200b@contoso.test",
        "\ud800@contoso.test",
        "a" * MAX_USERNAME_CHARS + "@contoso.test",
    ],
)
def test_login_value_refuses(username: str) -> None:
    verdict = login_value(username, **UID)
    assert isinstance(verdict, Verdict) and verdict.status is Status.INVALID_USERNAME
    assert "fabrikam" not in verdict.detail  # caller input is never echoed


def test_verdict_detail_is_capped_for_the_wire() -> None:
    assert len(Verdict(Status.AGENT_ERROR, "x" * 500).detail) == 200


def test_locked_versus_disabled() -> None:
    assert locked_verdict([b"000001010000Z"]).status is Status.ACCOUNT_DISABLED
    assert locked_verdict([b"20261123142200Z"]).status is Status.ACCOUNT_LOCKED
    assert locked_verdict([]).status is Status.ACCOUNT_LOCKED  # unreadable: locked
