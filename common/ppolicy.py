"""The LDAP password policy control (draft-behera-ldap-password-policy-10), both ways.

A bind that carries the request control (OID 1.3.6.1.4.1.42.2.27.8.5.1, no value) gets a
response control that says *why* the bind failed or what it must do next: slapd's ppolicy
overlay leaves the diagnostic message empty, so this control is the only place the reason
lives. ldap3 hands the response back undecoded (``result["controls"][OID]["value"]``);
this module decodes it without I/O (section 6.2 of the draft)::

    PasswordPolicyResponseValue ::= SEQUENCE {
        warning [0] CHOICE {
            timeBeforeExpiration [0] INTEGER (0 .. maxInt),
            graceAuthNsRemaining [1] INTEGER (0 .. maxInt) } OPTIONAL,
        error   [1] ENUMERATED { passwordExpired (0), accountLocked (1),
            changeAfterReset (2), passwordModNotAllowed (3), mustSupplyOldPassword (4),
            insufficientPasswordQuality (5), passwordTooShort (6), passwordTooYoung (7),
            passwordInHistory (8) } OPTIONAL }

The tags are implicit (the module is ``DEFINITIONS IMPLICIT TAGS``) except the warning's
CHOICE, which is always explicit: warning is ``A0``, its alternatives ``80``/``81``,
error ``81``.

It also holds ``PERMANENT_LOCK_TIME``: the ``pwdAccountLockedTime`` value that marks an
administrative, permanent lock (a *disabled* account), as opposed to a real timestamp
written by a failure lockout (a *locked* account). Both answer a bind with
``accountLocked``; only reading the attribute tells them apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum

PPOLICY_OID = "1.3.6.1.4.1.42.2.27.8.5.1"

# draft-behera section 5.3.13 / slapo-ppolicy(5): "000001010000Z" = locked until an
# administrator unlocks it; the project treats it as "account disabled".
PERMANENT_LOCK_TIME = "000001010000Z"

_SEQUENCE = 0x30
_WARNING = 0xA0  # [0] constructed (the CHOICE is explicitly tagged)
_TIME_BEFORE_EXPIRATION = 0x80  # [0] primitive INTEGER
_GRACE_AUTHNS_REMAINING = 0x81  # [1] primitive INTEGER
_ERROR = 0x81  # [1] primitive ENUMERATED
_MAX_INT = 2**31 - 1  # RFC 4511 maxInt


class PpolicyError(IntEnum):
    """The ``error`` field of the response control."""

    PASSWORD_EXPIRED = 0
    ACCOUNT_LOCKED = 1
    CHANGE_AFTER_RESET = 2
    PASSWORD_MOD_NOT_ALLOWED = 3
    MUST_SUPPLY_OLD_PASSWORD = 4
    INSUFFICIENT_PASSWORD_QUALITY = 5
    PASSWORD_TOO_SHORT = 6
    PASSWORD_TOO_YOUNG = 7
    PASSWORD_IN_HISTORY = 8


@dataclass(frozen=True, slots=True)
class PpolicyResponse:
    """A decoded response control; every field is optional on the wire."""

    error: PpolicyError | None = None
    time_before_expiration: int | None = None  # seconds until the password expires
    grace_remaining: int | None = None  # grace binds left after expiry


class PpolicyDecodeError(ValueError):
    """The password policy response control is not valid BER for draft-behera section 6.2."""


def request_control(*, is_critical: bool = False) -> tuple[str, bool, None]:
    """The request control in ldap3's ``controls=[...]`` form (it has no value)."""
    return (PPOLICY_OID, is_critical, None)


def _read_tlv(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """Read one tag-length-value at ``pos``; return (tag, value, position after it)."""
    if pos + 2 > len(data):
        raise PpolicyDecodeError("truncated tag or length")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise PpolicyDecodeError("multi-byte tags are not used by this control")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise PpolicyDecodeError("indefinite length is not allowed in LDAP (RFC 4511 5.1)")
    else:
        count = first & 0x7F
        if count > 4 or pos + count > len(data):
            raise PpolicyDecodeError("bad long-form length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    end = pos + length
    if end > len(data):
        raise PpolicyDecodeError("value runs past the end of the control")
    return tag, data[pos:end], end


def _read_uint(value: bytes, what: str) -> int:
    """A BER INTEGER/ENUMERATED that must lie in 0 .. maxInt."""
    if not value or len(value) > 5:
        raise PpolicyDecodeError(f"{what}: bad integer length {len(value)}")
    number = int.from_bytes(value, "big", signed=True)
    if not 0 <= number <= _MAX_INT:
        raise PpolicyDecodeError(f"{what}: {number} is outside 0 .. maxInt")
    return number


def decode_ppolicy_control(value: bytes) -> PpolicyResponse:
    """Decode the response control's value; raise PpolicyDecodeError if it is malformed."""
    tag, body, end = _read_tlv(value, 0)
    if tag != _SEQUENCE:
        raise PpolicyDecodeError(f"expected a SEQUENCE, got tag 0x{tag:02x}")
    if end != len(value):
        raise PpolicyDecodeError("trailing bytes after the SEQUENCE")
    error: PpolicyError | None = None
    time_before_expiration: int | None = None
    grace_remaining: int | None = None
    pos = 0
    seen_warning = seen_error = False
    while pos < len(body):
        tag, field, pos = _read_tlv(body, pos)
        if tag == _WARNING and not seen_warning and not seen_error:
            seen_warning = True
            inner_tag, inner, inner_end = _read_tlv(field, 0)
            if inner_end != len(field):
                raise PpolicyDecodeError("warning holds more than one alternative")
            if inner_tag == _TIME_BEFORE_EXPIRATION:
                time_before_expiration = _read_uint(inner, "timeBeforeExpiration")
            elif inner_tag == _GRACE_AUTHNS_REMAINING:
                grace_remaining = _read_uint(inner, "graceAuthNsRemaining")
            else:
                raise PpolicyDecodeError(f"unknown warning alternative 0x{inner_tag:02x}")
        elif tag == _ERROR and not seen_error:
            seen_error = True
            code = _read_uint(field, "error")
            try:
                error = PpolicyError(code)
            except ValueError:
                raise PpolicyDecodeError(f"unknown error value {code}") from None
        else:
            raise PpolicyDecodeError(f"unexpected or repeated field tag 0x{tag:02x}")
    return PpolicyResponse(error, time_before_expiration, grace_remaining)


def response_from_result(result: Mapping[str, object]) -> PpolicyResponse | None:
    """The decoded control of an ldap3 result dict, or None when the server sent none.

    Raises PpolicyDecodeError when the control is present but malformed.
    """
    controls = result.get("controls")
    if not isinstance(controls, Mapping):
        return None
    control = controls.get(PPOLICY_OID)
    if not isinstance(control, Mapping):
        return None
    raw = control.get("value")
    if not isinstance(raw, bytes | bytearray):
        raise PpolicyDecodeError("the control carries no value")
    return decode_ppolicy_control(bytes(raw))
