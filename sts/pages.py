"""Server-rendered HTML pages: plain forms, no JavaScript, every value escaped.

The device login form, its result page and the error page of browser routes. Templates
are `string.Template`s filled only through `_fill`, which HTML-escapes every value
(quotes included), so nothing a user typed can become markup. The password field is
never given a value: a password is never echoed into a page.

Responses carry `Cache-Control: no-store` and a strict Content-Security-Policy (no
scripts at all, forms post only to this site, no framing: clickjacking would let another
site approve a device code with the victim's session).
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from string import Template

from aiohttp import web

PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

_LAYOUT = Template("""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 28rem; margin: 3rem auto; padding: 0 1rem; }
label { display: block; margin-top: 1rem; }
input[type=text], input[type=password] { width: 100%; padding: .4rem; box-sizing: border-box; }
.error { color: #a4262c; border-left: 3px solid #a4262c; padding-left: .6rem; }
.meta { color: #555; font-size: .85rem; }
button { margin-top: 1.2rem; padding: .4rem 1.2rem; }
</style>
</head>
<body>
<h1>$title</h1>
$body
</body>
</html>
""")

_DEVICE_LOGIN = Template("""<p>Enter the code displayed on your device, then sign in with your
administrator account to allow it.</p>
$error
<form method="post" action="/devicelogin">
<input type="hidden" name="csrf_token" value="$csrf_token">
<label>Code <input type="text" name="user_code" value="$user_code" maxlength="16"
 autocomplete="one-time-code" autocapitalize="characters" required autofocus></label>
<label>Username <input type="text" name="username" value="$username" maxlength="256"
 autocomplete="username" required></label>
<label>Password <input type="password" name="password" maxlength="256"
 autocomplete="current-password" required></label>
<button type="submit" name="action" value="approve">Sign in and allow</button>
<button type="submit" name="action" value="deny">Sign in and deny</button>
</form>
""")

_ERROR_NOTE = Template('<p class="error" role="alert">$message</p>')

_RESULT = Template("<p>$message</p>\n<p>You can close this window.</p>\n")

_ERROR = Template("""<p class="error" role="alert">$message</p>
<p class="meta">Error code: $code<br>Correlation ID: $correlation_id<br>Timestamp: $timestamp</p>
""")


def _fill(template: Template, values: Mapping[str, str]) -> str:
    """Substitute every placeholder with its HTML-escaped value."""
    return template.substitute({k: html.escape(v, quote=True) for k, v in values.items()})


def _layout(title: str, body_html: str) -> str:
    # body_html was built by _fill: already escaped.
    return _LAYOUT.substitute(title=html.escape(title, quote=True), body=body_html)


def device_login_page(
    *, csrf_token: str, user_code: str = "", username: str = "", error: str = ""
) -> str:
    """The device login form, optionally with an error and the user's earlier input."""
    note = _fill(_ERROR_NOTE, {"message": error}) if error else ""
    body = _DEVICE_LOGIN.substitute(
        error=note,
        csrf_token=html.escape(csrf_token, quote=True),
        user_code=html.escape(user_code, quote=True),
        username=html.escape(username, quote=True),
    )
    return _layout("Sign in to your device", body)


def result_page(*, title: str, message: str) -> str:
    """A final page: the device was allowed or denied."""
    return _layout(title, _fill(_RESULT, {"message": message}))


def error_page(*, code: str, message: str, correlation_id: str, timestamp: str) -> str:
    """The error page of browser routes: what went wrong and the ids support needs."""
    body = _fill(
        _ERROR,
        {
            "message": message,
            "code": code,
            "correlation_id": correlation_id,
            "timestamp": timestamp,
        },
    )
    return _layout("Sign-in failed", body)


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
