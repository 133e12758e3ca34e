"""HTML pages escape everything and never echo a password (sts.pages); device user codes."""

from __future__ import annotations

import re

from sts.devicecode import (
    USER_CODE_ALPHABET,
    hash_device_code,
    new_user_code,
    normalize_user_code,
)
from sts.pages import PAGE_HEADERS, device_login_page, error_page, html_response, result_page

HOSTILE = '"><script>alert(1)</script>'


def test_device_login_page_escapes_what_the_user_typed() -> None:
    page = device_login_page(csrf_token=HOSTILE, user_code=HOSTILE, username=HOSTILE, error=HOSTILE)
    assert "<script>" not in page
    assert page.count("&#34;&gt;&lt;script&gt;") == 4


def test_the_password_field_never_has_a_value() -> None:
    page = device_login_page(csrf_token="t", user_code="BCDFGHJK", username="a@b.c", error="x")
    (password_input,) = re.findall(r"<input type=\"password\"[^>]*>", page)
    assert "value=" not in password_input
    assert "<script" not in page.lower()


def test_result_and_error_pages_escape() -> None:
    assert "<script>" not in result_page(title=HOSTILE, message=HOSTILE)
    page = error_page(code="AADSTS90100", message=HOSTILE, correlation_id="c-1", timestamp="t")
    assert "<script>" not in page and "AADSTS90100" in page and "c-1" in page


def test_html_responses_carry_the_security_headers() -> None:
    response = html_response("<p>x</p>", status=400, headers={"X-Extra": "1"})
    assert response.status == 400 and response.content_type == "text/html"
    for name, value in PAGE_HEADERS.items():
        assert response.headers[name] == value
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]


def test_user_codes() -> None:
    codes = {new_user_code() for _ in range(200)}
    assert len(codes) == 200
    assert all(len(c) == 8 and set(c) <= set(USER_CODE_ALPHABET) for c in codes)
    assert not set(USER_CODE_ALPHABET) & set("AEIOU01")
    assert normalize_user_code("bcdf-ghjk") == normalize_user_code(" BCDF GHJK") == "BCDFGHJK"
    for bad in ("BCDFGHJ", "BCDFGHJKL", "BCDFGHJA", "BCDFGHJ1", ""):
        assert normalize_user_code(bad) is None
    assert hash_device_code("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
