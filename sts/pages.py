"""Server-rendered HTML pages: plain forms, no JavaScript, every value escaped.

The device login form, its result page, the error page of browser routes, and the
sign-in pages of the authorize flow (username, password, form_post answer). Templates
are `string.Template`s filled only through `_fill` or `html.escape`, which escape every
value (quotes included), so nothing a user typed can become markup. The password field
is never given a value: a password is never echoed into a page.

Responses carry `Cache-Control: no-store` and a strict Content-Security-Policy (no
scripts, forms post only to this site, no framing: clickjacking would let another site
approve a device code with the victim's session). The authorize pages add the client's
redirect origin to `form-action`, and the form_post page allows its one auto-submit
script by hash.
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from string import Template

from aiohttp import web


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


_NOTICE = Template('<div class="error" role="alert" id="notice"><p>$message</p></div>\n')

_NOTICE_WITH_IDS = Template("""<div class="error" role="alert" id="notice">
<p>$code: $message</p>
<p class="meta">Correlation ID: $correlation_id<br>Timestamp: $timestamp</p>
</div>
""")

_HIDDEN = Template('<input type="hidden" name="$name" value="$value">\n')

_SIGN_IN_USERNAME = Template("""<p>to continue to <strong>$app_name</strong></p>
$notice<form method="post" action="$action">
$hidden<label for="username">Username (for example alex@contoso.com)</label>
<input type="text" id="username" name="username" value="$username" maxlength="$max"
 autocomplete="username" autocapitalize="none" spellcheck="false" required autofocus$invalid>
<button type="submit">Next</button>
</form>
""")

_SIGN_IN_PASSWORD = Template("""<p>Signing in to <strong>$app_name</strong> as</p>
<p><strong id="account">$username</strong></p>
$notice<form method="post" action="$action">
$hidden<label for="password">Password</label>
<input type="password" id="password" name="password" maxlength="$max"
 autocomplete="current-password" required autofocus$invalid>
<button type="submit">Sign in</button>
</form>
<p><a href="$restart">Sign in with another account</a></p>
""")

_FORM_POST = Template("""<form method="post" action="$action">
$hidden<noscript><p>Scripts are off in this browser. Press Continue to finish signing in.</p>
<button type="submit">Continue</button></noscript>
</form>
<script>$script</script>
""")

_INVALID = ' aria-invalid="true" aria-describedby="notice"'


def _notice(notice: Notice | None) -> str:
    if notice is None:
        return ""
    if not notice.code:
        return _fill(_NOTICE, {"message": notice.message})
    return _fill(
        _NOTICE_WITH_IDS,
        {
            "code": notice.code,
            "message": notice.message,
            "correlation_id": notice.correlation_id,
            "timestamp": notice.timestamp,
        },
    )


def _hidden(fields: Mapping[str, str]) -> str:
    return "".join(_fill(_HIDDEN, {"name": k, "value": v}) for k, v in fields.items())


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
    body = _SIGN_IN_USERNAME.substitute(
        app_name=html.escape(app_name, quote=True),
        notice=_notice(notice),
        action=html.escape(action, quote=True),
        hidden=_hidden(hidden),
        username=html.escape(username, quote=True),
        max=str(username_max),
        invalid=_INVALID if notice else "",
    )
    return _layout("Sign in", body)


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
    body = _SIGN_IN_PASSWORD.substitute(
        app_name=html.escape(app_name, quote=True),
        username=html.escape(username, quote=True),
        notice=_notice(notice),
        action=html.escape(action, quote=True),
        hidden=_hidden(hidden),
        max=str(password_max),
        invalid=_INVALID if notice else "",
        restart=html.escape(restart_url, quote=True),
    )
    return _layout("Enter password", body)


def form_post_page(*, action: str, fields: Mapping[str, str]) -> str:
    """OAuth 2.0 Form Post Response Mode: the answer posted to the client by the browser
    (auto-submitted; a Continue button without scripts)."""
    body = _FORM_POST.substitute(
        action=html.escape(action, quote=True), hidden=_hidden(fields), script=AUTO_SUBMIT_SCRIPT
    )
    return _layout("Signing in", body)
