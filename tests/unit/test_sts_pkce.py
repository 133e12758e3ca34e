"""PKCE S256 (sts.pkce): RFC 7636 appendix B, verifier and challenge shapes."""

from __future__ import annotations

import pytest

from sts import pkce

# RFC 7636 appendix B.
RFC_VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
RFC_CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_rfc7636_appendix_b_vector() -> None:
    assert pkce.s256(RFC_VERIFIER) == RFC_CHALLENGE
    assert pkce.matches(RFC_VERIFIER, RFC_CHALLENGE)
    assert pkce.is_valid_challenge(RFC_CHALLENGE)


def test_a_different_verifier_does_not_match() -> None:
    other = RFC_VERIFIER[:-1] + ("j" if RFC_VERIFIER[-1] != "j" else "k")
    assert not pkce.matches(other, RFC_CHALLENGE)
    assert not pkce.matches(RFC_VERIFIER, RFC_CHALLENGE[:-1] + "A")
    # plain would be verifier == challenge: never accepted
    assert not pkce.matches(RFC_VERIFIER, RFC_VERIFIER)


@pytest.mark.parametrize(
    ("verifier", "is_valid"),
    [
        ("a" * 43, True),
        ("a" * 128, True),
        ("A-b.c_d~" * 6, True),
        ("a" * 42, False),  # too short (RFC 7636 section 4.1)
        ("a" * 129, False),  # too long
        ("a" * 42 + "+", False),  # not in the unreserved set
        ("a" * 42 + "/", False),
        ("a" * 42 + "=", False),
        ("a" * 43 + "\n", False),  # a trailing newline is not "end of string"
        ("a" * 42 + "é", False),
        ("", False),
    ],
)
def test_verifier_shape(verifier: str, is_valid: bool) -> None:
    assert pkce.is_valid_verifier(verifier) is is_valid
    if not is_valid:  # an invalid verifier never matches, whatever its hash
        assert not pkce.matches(verifier, pkce.s256(verifier.encode("ascii", "replace").decode()))


@pytest.mark.parametrize(
    "challenge",
    [
        RFC_CHALLENGE[:-1],  # 42 characters
        RFC_CHALLENGE + "A",  # 44
        RFC_CHALLENGE + "=",  # padded
        RFC_CHALLENGE[:-1] + "+",  # base64, not base64url
        RFC_CHALLENGE[:-1] + "N",  # last character with non-zero unused bits
        RFC_CHALLENGE + "\n",
        "",
    ],
)
def test_malformed_challenges(challenge: str) -> None:
    assert not pkce.is_valid_challenge(challenge)


def test_every_s256_output_is_a_valid_challenge() -> None:
    for n in range(43, 129, 17):
        assert pkce.is_valid_challenge(pkce.s256("v" * n))
