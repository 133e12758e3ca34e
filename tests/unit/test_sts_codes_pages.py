"""The sign-in pages (sts.pages) and the pure parts of the authorize endpoint
(sts.authorize): escaping, no password echo, CSP sources, redirect query building."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest

from sts.authorize import _csp_sources, with_query
from sts.pages import (
    AUTO_SUBMIT_SCRIPT,
    PAGE_HEADERS,
    Notice,
    content_security_policy,
    form_post_page,
    sign_in_password_page,
    sign_in_username_page,
)

HOSTILE = '"><script>alert(1)</script>'


def test_username_page_escapes_everything_and_labels_the_field() -> None:
    page = sign_in_username_page(
        action="/t/oauth2/v2.0/authorize",
        hidden={"state": HOSTILE, HOSTILE: "x"},
        app_name=HOSTILE,
        username=HOSTILE,
        notice=Notice(HOSTILE),
    )
    assert "<script>" not in page
    assert page.count("&#34;&gt;&lt;script&gt;") == 5
    assert '<label for="username">' in page and 'id="username"' in page
    assert 'aria-describedby="notice"' in page and 'role="alert"' in page


def test_password_page_never_has_a_password_value_and_shows_the_ids() -> None:
    notice = Notice("Your account or password is incorrect.", "AADSTS50126", "corr-1", "ts")
    page = sign_in_password_page(
        action="/t/oauth2/v2.0/authorize",
        hidden={"username": HOSTILE},
        app_name="Demo",
        username=HOSTILE,
        restart_url='/t/oauth2/v2.0/authorize?state="><x',
        notice=notice,
    )
    (password_input,) = re.findall(r'<input type="password"[^>]*>', page)
    assert "value=" not in password_input
    assert '<label for="password">' in page
    assert "AADSTS50126: Your account or password is incorrect." in page
    assert "Correlation ID: corr-1" in page
    assert "<script" not in page.lower() and "<x" not in page


def test_form_post_page_and_its_script_hash() -> None:
    page = form_post_page(
        action="https://app.test/cb?x=1&y=2", fields={"code": "c", "state": HOSTILE}
    )
    assert 'action="https://app.test/cb?x=1&amp;y=2"' in page
    assert "<noscript>" in page and 'type="submit"' in page
    assert f"<script>{AUTO_SUBMIT_SCRIPT}</script>" in page
    assert "<script>alert" not in page
    csp = content_security_policy(form_action=("https://app.test",), script=AUTO_SUBMIT_SCRIPT)
    digest = base64.b64encode(hashlib.sha256(AUTO_SUBMIT_SCRIPT.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in csp
    assert "form-action 'self' https://app.test;" in csp


def test_default_policy_and_referrer() -> None:
    assert PAGE_HEADERS["Content-Security-Policy"] == content_security_policy()
    assert "script-src" not in PAGE_HEADERS["Content-Security-Policy"]
    # no-referrer would make browsers send `Origin: null` on our own form POSTs.
    assert PAGE_HEADERS["Referrer-Policy"] == "same-origin"


@pytest.mark.parametrize(
    ("uri", "sources"),
    [
        ("http://localhost:8400/callback", ("http://localhost:8400",)),
        ("https://App.Example.com/cb?x=1", ("https://app.example.com",)),
        ("https://[::1]:8443/cb", ("https://[::1]:8443",)),
        ("msal6f1c3c1e://auth", ("msal6f1c3c1e:",)),
        ("https://bad;host/cb", ()),  # cannot be written safely in a header
        ("https://host:99999/cb", ()),
        ("1bad://x", ()),
    ],
)
def test_csp_sources_of_a_redirect_uri(uri: str, sources: tuple[str, ...]) -> None:
    assert _csp_sources(uri) == sources


def test_with_query_keeps_the_registered_query() -> None:
    assert with_query("http://localhost:8400/callback", {"code": "a b", "state": "s&t"}) == (
        "http://localhost:8400/callback?code=a+b&state=s%26t"
    )
    assert with_query("https://app.test/cb?tenant=1", {"code": "c"}) == (
        "https://app.test/cb?tenant=1&code=c"
    )
