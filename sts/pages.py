"""Server-rendered HTML pages: plain forms, no JavaScript, every value escaped.

The device login form, its result page, the error page of browser routes, and the
sign-in pages of the authorize flow (username, password, form_post answer). The pages are
Jinja2 templates in ``sts/templates`` rendered with autoescaping on for every template, so
every value is escaped (quotes included) unless a template marks it safe, which only the
form_post page does for its constant script; nothing a user typed can become markup. The
password field is never given a value: a password is never echoed into a page.

Responses carry `Cache-Control: no-store` and a strict Content-Security-Policy (no
scripts, forms post only to this site, no framing: clickjacking would let another site
approve a device code with the victim's session). The authorize pages add the client's
redirect origin to `form-action`, and the form_post page allows its one auto-submit
script by hash.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jinja2
from aiohttp import web

_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("sts", "templates"),
    # Every template, whatever its name: escaping is the default, never a choice per page.
    autoescape=True,
    # A misspelt placeholder is an error at the first render (every page has a unit test),
    # never an empty string in production.
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
)


def _render(name: str, **values: Any) -> str:
    return _TEMPLATES.get_template(name).render(**values)


def content_security_policy(*, form_action: Sequence[str] = (), script: str | None = None) -> str:
    """The pages' policy: nothing but inline styles; forms post to this site and to
    `form_action` (a client's redirect origin: browsers apply form-action to the redirect
    that follows a POST too); `script`, when given, is the one inline script allowed."""
    targets = " ".join(["'self'", *form_action])
    policy = (
        f"default-src 'none'; style-src 'unsafe-inline'; form-action {targets}; "
        "frame-ancestors 'none'; base-uri 'none'"
    )
    if script is not None:
        digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode()
        policy += f"; script-src 'sha256-{digest}'"
    return policy


PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "Content-Security-Policy": content_security_policy(),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: with it, browsers send `Origin: null` on our own form POSTs (Fetch
    # standard, "append a request Origin header") and the CSRF Origin check refuses them.
    # same-origin sends our origin to ourselves and no referrer to anyone else.
    "Referrer-Policy": "same-origin",
}


def device_login_page(
    *, csrf_token: str, user_code: str = "", username: str = "", error: str = ""
) -> str:
    """The device login form, optionally with an error and the user's earlier input."""
    return _render(
        "device_login.html",
        title="Sign in to your device",
        csrf_token=csrf_token,
        user_code=user_code,
        username=username,
        error=error,
    )


def result_page(*, title: str, message: str) -> str:
    """A final page: the device was allowed or denied."""
    return _render("result.html", title=title, message=message)


def error_page(*, code: str, message: str, correlation_id: str, timestamp: str) -> str:
    """The error page of browser routes: what went wrong and the ids support needs."""
    return _render(
        "error.html",
        title="Sign-in failed",
        message=message,
        code=code,
        correlation_id=correlation_id,
        timestamp=timestamp,
    )


def html_response(
    page: str, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """An HTML response with the page security headers."""
    response = web.Response(
        text=page, status=status, content_type="text/html", charset="utf-8", headers=PAGE_HEADERS
    )
    if headers:
        response.headers.update(headers)
    return response


# --------------------------------------------------------------------------- sign-in pages
# The browser sign-in of `sts.authorize`: a username page, a password page, and the
# `form_post` response page. Flow parameters ride in hidden fields (re-validated on
# every POST by the handler, never trusted from here).

AUTO_SUBMIT_SCRIPT = "document.forms[0].submit();"
"""The only script the STS serves: the form_post page's auto-submit, allowed by its hash."""


@dataclass(frozen=True, slots=True)
class Notice:
    """A message on a sign-in page; with a code, also the ids support needs."""

    message: str
    code: str = ""
    correlation_id: str = ""
    timestamp: str = ""


def sign_in_username_page(
    *,
    action: str,
    hidden: Mapping[str, str],
    app_name: str,
    username: str = "",
    username_max: int = 256,
    notice: Notice | None = None,
) -> str:
    """The first sign-in page: who are you (prefilled from login_hint or earlier input)."""
    return _render(
        "sign_in_username.html",
        title="Sign in",
        action=action,
        hidden=hidden,
        app_name=app_name,
        username=username,
        username_max=username_max,
        notice=notice,
    )


def sign_in_password_page(
    *,
    action: str,
    hidden: Mapping[str, str],
    app_name: str,
    username: str,
    restart_url: str,
    password_max: int = 256,
    notice: Notice | None = None,
) -> str:
    """The second sign-in page: the account, an empty password field, "Sign in"."""
    return _render(
        "sign_in_password.html",
        title="Enter password",
        action=action,
        hidden=hidden,
        app_name=app_name,
        username=username,
        restart_url=restart_url,
        password_max=password_max,
        notice=notice,
    )


def form_post_page(*, action: str, fields: Mapping[str, str]) -> str:
    """OAuth 2.0 Form Post Response Mode: the answer posted to the client by the browser
    (auto-submitted; a Continue button without scripts)."""
    return _render(
        "form_post.html",
        title="Signing in",
        action=action,
        fields=fields,
        script=AUTO_SUBMIT_SCRIPT,
    )
