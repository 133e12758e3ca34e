"""The device login page, person side of RFC 8628: `GET` and `POST /devicelogin`.

A plain HTML form (no JavaScript): the person types the user code shown by the device,
their username and password, and allows or denies. Only the tenant's cloud-only admins
can sign in here, and only for a code of their own tenant: the credentials are checked
against the admins of the code's tenant, so another tenant's admin gets AADSTS50034.
A wrong password is 50126. Either way the form comes back with the message, the code and
username kept and the password field empty (never echoed).

CSRF: `sts.csrf` (double-submit cookie and Origin check); a failed check is an HTML
error page (AADSTS90100), not the form.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from typing import Final

import structlog
from aiohttp import web

from sts.correlation import bind_tenant
from sts.csrf import CSRF_FIELD, check_csrf, csrf_cookie_token, with_csrf_cookie
from sts.devicecode import DEVICE_FLOW, DeviceFlow, normalize_user_code
from sts.errors import (
    BROWSER_ROUTE_PREFIX,
    InvalidCredentials,
    InvalidParameter,
    SmartLockout,
    UserNotFound,
)
from sts.forms import PASSWORD_MAX, SHORT_MAX, USERNAME_MAX, read_form
from sts.pages import device_login_page, html_response, result_page
from sts.settings import SETTINGS

LOGIN_FIELDS: Final = {
    CSRF_FIELD: SHORT_MAX,
    "user_code": SHORT_MAX,
    "username": USERNAME_MAX,
    "password": PASSWORD_MAX,
    "action": SHORT_MAX,
}

CODE_NOT_FOUND: Final = (
    "That code was not recognised, has expired or was already used. "
    "Check the code on your device, or start again there."
)


async def get_devicelogin(request: web.Request) -> web.Response:
    """`GET /devicelogin`: the empty form, with a CSRF token (reused if still valid)."""
    is_https = request.app[SETTINGS].is_https
    token = csrf_cookie_token(request, is_https) or secrets.token_urlsafe(32)
    response = html_response(device_login_page(csrf_token=token))
    return with_csrf_cookie(response, token, is_https)


async def post_devicelogin(request: web.Request) -> web.Response:
    """`POST /devicelogin`: check the CSRF token, the code and the admin; allow or deny."""
    settings = request.app[SETTINGS]
    flow = request.app[DEVICE_FLOW]
    form = await read_form(request, LOGIN_FIELDS, secret_fields=frozenset({"password"}))
    token = check_csrf(request, form.get(CSRF_FIELD), public_url=settings.public_url)
    action = form.get("action") or "approve"
    if action not in ("approve", "deny"):
        raise InvalidParameter("The action must be 'approve' or 'deny'.")
    typed_code = form.get("user_code") or ""
    username = form.get("username") or ""

    def again(message: str) -> web.Response:
        page = device_login_page(
            csrf_token=token, user_code=typed_code, username=username, error=message
        )
        return html_response(page, status=400)

    code = normalize_user_code(typed_code)
    if code is None:
        return again("Enter the code displayed on your device.")
    password = form.get("password")
    if not username or password is None:
        return again("Enter your username and password.")
    return await _decide(flow, code, username, password, is_denied=action == "deny", again=again)


async def _decide(
    flow: DeviceFlow,
    code: str,
    username: str,
    password: str,
    *,
    is_denied: bool,
    again: Callable[[str], web.Response],
) -> web.Response:
    log = structlog.get_logger(__name__)
    pending = await flow.db.pending_device_code(code)
    if pending is None:
        log.info("device_login_refused", outcome="code_not_found")
        return again(CODE_NOT_FOUND)
    bind_tenant(str(pending.tenant_id))
    try:
        admin = await flow.admins.verify(pending.tenant_id, username, password)
    except (UserNotFound, InvalidCredentials, SmartLockout) as exc:
        log.info("device_login_refused", outcome=exc.error, code=exc.code, username=username)
        return again(exc.message)
    is_decided = await flow.db.decide_device_code(
        device_code_hash=pending.device_code_hash,
        tenant_id=pending.tenant_id,
        admin_id=None if is_denied else uuid.UUID(admin.id),
        is_denied=is_denied,
    )
    if not is_decided:  # expired or decided by someone else since it was read
        return again(CODE_NOT_FOUND)
    app_name = pending.app_name or "the PTA authentication agent"
    log.info(
        "device_code_declined" if is_denied else "device_code_approved",
        client_id=pending.client_id,
        username=admin.username,
        oid=admin.id,
    )
    if is_denied:
        page = result_page(
            title="Sign-in denied", message=f"You denied the sign-in request of {app_name}."
        )
    else:
        page = result_page(
            title="You're signed in",
            message=(
                f"You signed in to {app_name} on your device as {admin.username} "
                f"({pending.tenant_name})."
            ),
        )
    return html_response(page)


def add_routes(app: web.Application) -> None:
    resource = app.router.add_resource("/devicelogin", name=f"{BROWSER_ROUTE_PREFIX}devicelogin")
    resource.add_route("GET", get_devicelogin)
    resource.add_route("POST", post_devicelogin)
