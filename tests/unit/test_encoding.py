"""common.encoding: the one base64url and the one canonical-UUID check."""

from __future__ import annotations

import base64
import hashlib
import uuid

import pytest

from common.encoding import b64url, is_canonical_uuid


@pytest.mark.parametrize("size", [0, 1, 2, 3, 31, 32, 33])
def test_b64url_is_unpadded_and_round_trips(size: int) -> None:
    raw = bytes(range(size))
    text = b64url(raw)
    assert "=" not in text and "+" not in text and "/" not in text
    assert base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)) == raw


def test_b64url_known_answer() -> None:
    # RFC 7636 appendix B: the S256 challenge of the example verifier.
    verifier = b"dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert (
        b64url(hashlib.sha256(verifier).digest()) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    )


GOOD = str(uuid.UUID(int=0xABCDEF0123456789))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (GOOD, True),
        (GOOD.upper(), False),
        ("{" + GOOD + "}", False),
        (GOOD.replace("-", ""), False),
        ("urn:uuid:" + GOOD, False),
        ("", False),
        ("not a uuid", False),
        (None, False),
        (12, False),
    ],
)
def test_is_canonical_uuid(value: object, expected: bool) -> None:
    assert is_canonical_uuid(value) is expected
