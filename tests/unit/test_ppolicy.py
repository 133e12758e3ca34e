"""The password policy response control decoder (common.ppolicy), from byte vectors.

The first vectors are what slapd 2.5.13 actually sent for the seeded users (captured with
ldap3); the rest cover the warning alternatives and malformed input.
"""

from __future__ import annotations

import pytest

from common.ppolicy import (
    PPOLICY_OID,
    PpolicyDecodeError,
    PpolicyError,
    PpolicyResponse,
    decode_ppolicy_control,
    request_control,
    response_from_result,
)


@pytest.mark.parametrize(
    ("hex_value", "expected"),
    [
        # Observed from slapd: success and wrong password both carry an empty SEQUENCE.
        ("3000", PpolicyResponse()),
        ("3003810100", PpolicyResponse(error=PpolicyError.PASSWORD_EXPIRED)),
        ("3003810101", PpolicyResponse(error=PpolicyError.ACCOUNT_LOCKED)),
        ("3003810102", PpolicyResponse(error=PpolicyError.CHANGE_AFTER_RESET)),
        ("3003810108", PpolicyResponse(error=PpolicyError.PASSWORD_IN_HISTORY)),
        # warning [0] { timeBeforeExpiration [0] 60 }
        ("3005a00380013c", PpolicyResponse(time_before_expiration=60)),
        # warning [0] { graceAuthNsRemaining [1] 2 }
        ("3005a003810102", PpolicyResponse(grace_remaining=2)),
        # 86400 s needs three content bytes; 200 needs a leading zero (positive INTEGER).
        ("3007a0058003015180", PpolicyResponse(time_before_expiration=86400)),
        ("3006a004800200c8", PpolicyResponse(time_before_expiration=200)),
        # warning and error together
        ("3008a003810101810100", PpolicyResponse(PpolicyError.PASSWORD_EXPIRED, None, 1)),
        # long-form lengths are legal BER
        ("308103810100", PpolicyResponse(error=PpolicyError.PASSWORD_EXPIRED)),
        ("30820003810101", PpolicyResponse(error=PpolicyError.ACCOUNT_LOCKED)),
    ],
)
def test_decodes(hex_value: str, expected: PpolicyResponse) -> None:
    assert decode_ppolicy_control(bytes.fromhex(hex_value)) == expected


@pytest.mark.parametrize(
    "hex_value",
    [
        "",  # no bytes
        "30",  # no length
        "3103810100",  # SET, not SEQUENCE
        "3004810100",  # length past the end
        "300381010000",  # trailing bytes
        "30808101000000",  # indefinite length
        "3003810109",  # error value beyond the draft
        "30038101ff",  # negative
        "30028100",  # empty integer
        "3003820100",  # unknown field tag
        "3006810100810101",  # error twice
        "3008810100a003800101",  # warning after error
        "3005a003820101",  # unknown warning alternative
        "3008a006800101810101",  # two alternatives in one warning
        "30088106000000000001",  # integer wider than 5 bytes
        "300781050080000000",  # above maxInt
        "30031f0100",  # multi-byte tag inside
        "1f0100",  # multi-byte tag outside
        "30850000000003810100",  # length of length too long
    ],
)
def test_rejects_malformed(hex_value: str) -> None:
    with pytest.raises(PpolicyDecodeError):
        decode_ppolicy_control(bytes.fromhex(hex_value))


def test_request_control_has_no_value() -> None:
    assert request_control() == (PPOLICY_OID, False, None)
    assert request_control(is_critical=True) == (PPOLICY_OID, True, None)


def test_response_from_ldap3_result() -> None:
    result = {
        "result": 49,
        "controls": {
            PPOLICY_OID: {"description": "", "criticality": False, "value": b"\x30\x03\x81\x01\x01"}
        },
    }
    assert response_from_result(result) == PpolicyResponse(error=PpolicyError.ACCOUNT_LOCKED)
    assert response_from_result({"result": 49}) is None
    assert response_from_result({"result": 49, "controls": {}}) is None
    with pytest.raises(PpolicyDecodeError):
        response_from_result({"controls": {PPOLICY_OID: {"value": None}}})
