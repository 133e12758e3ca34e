"""CSRF protection of the STS's HTML forms (device login, browser sign-in).

A hostile page must not submit our forms with a victim's browser. Double-submit token:
`GET` sets a random token in a cookie (`__Host-pta-csrf` over HTTPS: Secure, Path=/, no
Domain, so a sibling host cannot plant it; HttpOnly, SameSite=Strict) and in a hidden
field; `POST` requires both, equal (compared in constant time), and refuses a cross-origin
`Origin` header. Stateless, so any replica checks it.
"""

from __future__ import annotations

import hmac
import re
from typing import Final
from urllib.parse import urlsplit

from aiohttp import web

from sts.errors import CsrfRejected

CSRF_FIELD: Final = "csrf_token"
CSRF_MAX_AGE_S: Final = 3600
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{43}$")  # secrets.token_urlsafe(32)


def csrf_cookie_name(is_https: bool) -> str:
    """`__Host-` cookies must be Secure, so the prefix is used over HTTPS only."""
    return "__Host-pta-csrf" if is_https else "pta-csrf"


def csrf_cookie_token(request: web.Request, is_https: bool) -> str | None:
    """The browser's CSRF token from its cookie, if it has a well-formed one."""
    value = request.cookies.get(csrf_cookie_name(is_https))
    return value if value and _TOKEN.match(value) else None


def with_csrf_cookie(response: web.Response, token: str, is_https: bool) -> web.Response:
    """Set (or refresh) the CSRF cookie on a page that carries `token` in its form."""
    response.set_cookie(
        csrf_cookie_name(is_https),
        token,
        max_age=CSRF_MAX_AGE_S,
        path="/",
        secure=is_https,
        httponly=True,
        samesite="Strict",
    )
    return response


def check_csrf(request: web.Request, submitted: str | None, *, public_url: str) -> str:
    """The request's CSRF token, if the form and the cookie agree; raises CsrfRejected."""
    origin = request.headers.get("Origin")
    if origin is not None and origin != _origin(public_url):
        raise CsrfRejected()
    cookie = csrf_cookie_token(request, public_url.startswith("https://"))
    if cookie is None or submitted is None:
        raise CsrfRejected()
    if not hmac.compare_digest(cookie.encode("ascii"), submitted.encode("utf-8")):
        raise CsrfRejected()
    return cookie


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
