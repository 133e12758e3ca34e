"""Strict parsing of form bodies at the STS's edge (sts.forms)."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest

from sts.errors import InvalidParameter, MissingParameter
from sts.forms import MAX_FIELDS, parse_form

LIMITS = {"grant_type": 20, "username": 30, "password": 10}
SECRETS = frozenset({"password"})


def parse(body: bytes | str) -> dict[str, str]:
    raw = body.encode() if isinstance(body, str) else body
    return dict(parse_form(raw, LIMITS, secret_fields=SECRETS).values)


def test_known_fields_are_kept_unknown_ignored_empty_dropped() -> None:
    body = urlencode(
        {"grant_type": "password", "x-extra": "1", "username": "", "password": "a b+c"}
    )
    assert parse(body) == {"grant_type": "password", "password": "a b+c"}


def test_require_names_the_missing_field() -> None:
    form = parse_form(b"username=", LIMITS, secret_fields=SECRETS)
    with pytest.raises(MissingParameter, match="'username'"):
        form.require("username")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("grant_type=a&grant_type=b", "more than once"),
        ("grant_type=&grant_type=b", "more than once"),
        ("username=" + "u" * 31, "too long"),
        ("password=" + "p" * 11, "too long"),
        ("username=a%0Ab", "control character"),
        ("username=a%7Fb", "control character"),
        ("password=a%00b", "control character"),
        (b"username=\xff", "form encoding"),
        ("username=%ff", "form encoding"),
        ("&".join(f"f{i}=1" for i in range(MAX_FIELDS + 1)), "form encoding"),
    ],
)
def test_hostile_bodies_are_refused(body: str | bytes, reason: str) -> None:
    with pytest.raises(InvalidParameter, match=reason) as caught:
        parse(body)
    assert caught.value.code == 90100


def test_a_password_may_hold_any_character_but_nul() -> None:
    assert parse("password=%09%E2%82%AC%0A")["password"] == "\t€\n"


def test_messages_never_quote_a_value() -> None:
    with pytest.raises(InvalidParameter) as caught:
        parse("password=secret-123456789")
    assert "secret" not in str(caught.value)
