"""What an LDAP bind result means: pure mapping from ldap3 results to ``Verdict``s.

Split from ``agent.ldap_directory`` (which talks to the server) so the table can be read
and tested without I/O. Status mapping:

| directory | bind result | status |
|---|---|---|
| any | 0, no policy error | success (detail: days left when the server warns) |
| any | 49, no policy reason / AD data 52e, 525 / unknown data code | invalid_credentials |
| OpenLDAP | ppolicy passwordExpired; or 0 with graceAuthNsRemaining | password_expired |
| OpenLDAP | ppolicy changeAfterReset (even with result 0) | must_change_password |
| OpenLDAP | ppolicy accountLocked + pwdAccountLockedTime 000001010000Z | account_disabled |
| OpenLDAP | ppolicy accountLocked + any other pwdAccountLockedTime | account_locked |
| AD | 49 data 530 / 531 | logon_hours |
| AD | 49 data 532 | password_expired |
| AD | 49 data 533 | account_disabled |
| AD | 49 data 701 | account_expired |
| AD | 49 data 773 | must_change_password |
| AD | 49 data 775 | account_locked |
| any | 32 noSuchObject (entry gone since the search) | invalid_credentials |
| any | 51 busy, 52 unavailable | DirectoryUnavailable |
| any | 3 timeLimitExceeded | DirectoryTimeout |
| any | 13 confidentialityRequired | DirectoryMisconfigured (use TLS) |
| any | anything else, a malformed ppolicy control, 0 + another policy error | DirectoryError |

A wrong password and an unknown user share one status and one detail (``REJECTED_DETAIL``).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Any, Final

from agent.directory import (
    REJECTED_DETAIL,
    DirectoryError,
    DirectoryMisconfigured,
    DirectoryTimeout,
    DirectoryUnavailable,
    Verdict,
)
from common.ppolicy import (
    PERMANENT_LOCK_TIME,
    PpolicyDecodeError,
    PpolicyError,
    response_from_result,
)
from common.wire import Status

__all__ = [
    "AD_CODES",
    "MAX_USERNAME_CHARS",
    "ad_verdict",
    "locked_verdict",
    "login_value",
    "openldap_verdict",
]

# Entra caps a UPN at 113 characters and RFC 5321 a mailbox at 254; 256 leaves room for
# any real name while keeping a 10 KB hostile username out of every filter.
MAX_USERNAME_CHARS: Final = 256

# LDAP result codes (RFC 4511 appendix A) the mapping treats specially (shared with
# agent.ldap_directory, which checks search and service-bind results).
SUCCESS, TIME_LIMIT, SIZE_LIMIT, CONFIDENTIALITY = 0, 3, 4, 13
NO_SUCH_OBJECT, INVALID_DN, INVALID_CREDENTIALS = 32, 34, 49
BUSY, UNAVAILABLE = 51, 52

# Active Directory puts the reason of a failed bind in the diagnostic message as
# "AcceptSecurityContext error, data <hex>, v..." (the Win32 error of the logon;
# MS-ADTS 3.1.1.3.1.1, docs/servers.md "Samba as an AD DC"). Only the right password
# reveals the specific code; a wrong one is always 52e.
_AD_DATA = re.compile(r"\bdata ([0-9a-f]{3,4})\b", re.IGNORECASE)
AD_CODES: Final[Mapping[str, tuple[Status, str]]] = {
    "52e": (Status.INVALID_CREDENTIALS, REJECTED_DETAIL),
    "525": (Status.INVALID_CREDENTIALS, REJECTED_DETAIL),  # user not found
    "530": (Status.LOGON_HOURS, "not permitted to sign in at this time (logon hours)"),
    "531": (Status.LOGON_HOURS, "not permitted to sign in from this workstation"),
    "532": (Status.PASSWORD_EXPIRED, "password expired"),
    "533": (Status.ACCOUNT_DISABLED, "account disabled"),
    "701": (Status.ACCOUNT_EXPIRED, "account expired"),
    "773": (Status.MUST_CHANGE_PASSWORD, "password was reset: the user must change it"),
    "775": (Status.ACCOUNT_LOCKED, "account locked out"),
}


def login_value(username: str, *, domain: str, login_attribute: str) -> str | Verdict:
    """The value to search ``login_attribute`` for, or the ``invalid_username`` verdict.

    Pure; the caller escapes the value (once) when it builds the filter.
    """
    if not 0 < len(username) <= MAX_USERNAME_CHARS:
        return Verdict(Status.INVALID_USERNAME, f"username must be 1 to {MAX_USERNAME_CHARS} chars")
    if any(char.isspace() or unicodedata.category(char)[0] == "C" for char in username):
        return Verdict(Status.INVALID_USERNAME, "username holds space or control characters")
    local, at, suffix = username.rpartition("@")
    if not at or not local or "@" in local:
        return Verdict(Status.INVALID_USERNAME, "username must be local@domain")
    if suffix.casefold() != domain.casefold():
        # The foreign domain is not echoed: it is caller input.
        return Verdict(Status.INVALID_USERNAME, f"username is not in {domain}")
    return local if login_attribute == "uid" else username


def openldap_verdict(result: Mapping[str, Any]) -> Verdict | None:
    """Map an ldap3 bind result carrying the ppolicy response control to a verdict.

    None means ``accountLocked``: the caller reads ``pwdAccountLockedTime`` to tell a
    failure lockout (locked) from an administrative lock (disabled). Raises
    ``DirectoryError`` for a malformed control or a result that is not about the user.
    """
    code = result.get("result")
    try:
        control = response_from_result(result)
    except PpolicyDecodeError as exc:
        raise DirectoryError(f"(malformed password policy control: {exc})") from exc
    error = control.error if control is not None else None
    if error is PpolicyError.ACCOUNT_LOCKED:
        return None
    if error is PpolicyError.PASSWORD_EXPIRED:
        return Verdict(Status.PASSWORD_EXPIRED, "password expired")
    if error is PpolicyError.CHANGE_AFTER_RESET:
        # slapd lets the bind succeed (result 0) but the session may only change the
        # password: never a success (docs/servers.md, draft-behera section 8.1.2.2).
        return Verdict(Status.MUST_CHANGE_PASSWORD, "password was reset: the user must change it")
    if code == SUCCESS:
        if error is not None:
            raise DirectoryError(f"(bind succeeded with password policy error {error.name})")
        if control is not None and control.grace_remaining is not None:
            # Expired, but a grace bind was spent: the user must still change it first.
            return Verdict(
                Status.PASSWORD_EXPIRED,
                f"password expired ({control.grace_remaining} grace sign-ins left)",
            )
        if control is not None and control.time_before_expiration is not None:
            days = control.time_before_expiration / 86400
            return Verdict(Status.SUCCESS, f"password expires in {days:.1f} days")
        return Verdict(Status.SUCCESS)
    if code == INVALID_CREDENTIALS:
        return Verdict(Status.INVALID_CREDENTIALS, REJECTED_DETAIL)
    return _other_bind_result(result)


def ad_verdict(result: Mapping[str, Any]) -> Verdict:
    """Map an Active Directory bind result (``data XXX`` in its message) to a verdict.

    An unknown ``data`` code with result 49 is ``invalid_credentials`` (fail closed).
    Raises ``DirectoryError`` for a result that is not about the user.
    """
    code = result.get("result")
    if code == SUCCESS:
        return Verdict(Status.SUCCESS)
    if code == INVALID_CREDENTIALS:
        found = _AD_DATA.search(str(result.get("message") or ""))
        sub = found.group(1).lower() if found else ""
        if sub in AD_CODES:
            status, detail = AD_CODES[sub]
            return Verdict(status, detail)
        suffix = f" (AD data {sub})" if sub else ""
        return Verdict(Status.INVALID_CREDENTIALS, REJECTED_DETAIL + suffix)
    return _other_bind_result(result)


def _other_bind_result(result: Mapping[str, Any]) -> Verdict:
    """Bind results other than 0 and 49, the same for every kind of directory."""
    code = result.get("result")
    description = str(result.get("description") or "")
    if code in (NO_SUCH_OBJECT, INVALID_DN):
        # The entry vanished between search and bind: as if it had never been found.
        return Verdict(Status.INVALID_CREDENTIALS, REJECTED_DETAIL)
    if code == CONFIDENTIALITY:
        raise DirectoryMisconfigured("url: the directory requires TLS for binds (use ldaps).")
    if code in (BUSY, UNAVAILABLE):
        raise DirectoryUnavailable(f"(the directory answered {description})")
    if code == TIME_LIMIT:
        raise DirectoryTimeout(f"(the directory answered {description})")
    raise DirectoryError(f"(unexpected bind result {code} {description})")


def locked_verdict(lock_times: list[bytes]) -> Verdict:
    """Locked or disabled, from the entry's ``pwdAccountLockedTime`` values (ppolicy).

    Both answer a bind with ``accountLocked``; ``000001010000Z`` marks an administrative,
    permanent lock (disabled), a real timestamp a failure lockout (locked). An unreadable
    attribute counts as locked.
    """
    if PERMANENT_LOCK_TIME.encode() in lock_times:
        return Verdict(Status.ACCOUNT_DISABLED, "account disabled by an administrator")
    return Verdict(Status.ACCOUNT_LOCKED, "account locked after too many failed sign-ins")
