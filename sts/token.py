"""The token endpoint: `POST /{tenant}/oauth2/v2.0/token` (RFC 6749 section 3.2).

Form-encoded fields, validated at the edge (`sts.forms`). Checks run in this order, and
the first failure is the answer:
1. the tenant (AADSTS90002), the body (90100: not a form, a field repeated, too long);
2. `grant_type` present (900144) and supported (70003 unsupported_grant_type):
   `password` or `urn:ietf:params:oauth:grant-type:device_code`;
3. `client_id` present, and `pta-agent` or a public app of this tenant (700016, 7000218);
4. the grant:
   - password: refused when the tenant blocks legacy authentication (53003); `scope`
     (70011); `username`, `password` (900144); then the tenant's cloud-only admins
     verify it: not an admin of this tenant 50034, wrong password 50126. Synced users
     (validated by the agents) are not routed here yet, so they get 50034 for now.
   - device code: see `sts.devicecode.redeem`.
Success is `{"token_type": "Bearer", "access_token", "expires_in", "ext_expires_in",
"scope"}` plus `id_token` when `openid` was asked for and `client_info` when MSAL asks
(`client_info=1`), sent with `Cache-Control: no-store` (RFC 6749 section 5.1).

Each request logs one summary line, `token_issued` or `token_refused`, with the grant,
outcome, AADSTS code, client, username and duration; never a password, code or token.
"""

from __future__ import annotations

import time

import orjson
import structlog
from aiohttp import web

from sts.admins import ADMINS, Admin
from sts.clients import Client, resolve_client
from sts.correlation import context_of
from sts.devicecode import DEVICE_FLOW, redeem
from sts.discovery import PASSWORD_GRANT, SUPPORTED_GRANTS
from sts.errors import NO_STORE, LegacyAuthenticationBlocked, OAuthError, UnsupportedGrantType
from sts.forms import (
    CLIENT_ID_MAX,
    DEVICE_CODE_MAX,
    GRANT_TYPE_MAX,
    PASSWORD_MAX,
    SCOPE_MAX,
    SHORT_MAX,
    USERNAME_MAX,
    Form,
    read_form,
)
from sts.issuance import ISSUER, Scope, parse_scope
from sts.queries import DATABASE
from sts.tenants import Tenant, tenant_of

TOKEN_FIELDS = {
    "grant_type": GRANT_TYPE_MAX,
    "client_id": CLIENT_ID_MAX,
    "scope": SCOPE_MAX,
    "username": USERNAME_MAX,
    "password": PASSWORD_MAX,
    "device_code": DEVICE_CODE_MAX,
    "client_info": SHORT_MAX,
}
SECRET_FIELDS = frozenset({"password", "device_code"})


async def _password_grant(
    request: web.Request, tenant: Tenant, client: Client, form: Form
) -> tuple[Admin, Scope]:
    """Resource owner password credentials (RFC 6749 section 4.3), admins only for now."""
    if tenant.block_legacy_auth:
        raise LegacyAuthenticationBlocked()
    scope = parse_scope(form.get("scope"), client.client_id)
    username = form.require("username")
    password = form.require("password")
    admin = await request.app[ADMINS].verify(tenant.uuid, username, password)
    return admin, scope


async def post_token(request: web.Request) -> web.Response:
    """`POST /{tenant}/oauth2/v2.0/token`."""
    ctx = context_of(request)
    summary: dict[str, object] = {"grant": None, "client_id": None, "username": None}
    try:
        tenant = await tenant_of(request)
        form = await read_form(request, TOKEN_FIELDS, secret_fields=SECRET_FIELDS)
        grant = form.require("grant_type")
        if grant not in SUPPORTED_GRANTS:
            summary["grant"] = "unsupported"
            raise UnsupportedGrantType(
                f"The grant_type is not supported; use one of: {', '.join(SUPPORTED_GRANTS)}."
            )
        summary["grant"] = grant
        summary["username"] = form.get("username")
        client = await resolve_client(request.app[DATABASE], tenant, form.require("client_id"))
        summary["client_id"] = client.client_id
        if grant == PASSWORD_GRANT:
            admin, scope = await _password_grant(request, tenant, client, form)
        else:  # DEVICE_CODE_GRANT, the only other supported grant
            admin, scope = await redeem(
                request.app[DEVICE_FLOW], tenant, client, form.require("device_code")
            )
        body = request.app[ISSUER].token_response(
            admin,
            client_id=client.client_id,
            scope=scope,
            now=int(time.time()),
            with_client_info=form.get("client_info") == "1",
        )
    except OAuthError as exc:
        structlog.get_logger(__name__).info(
            "token_refused",
            **summary,
            outcome=exc.error,
            code=exc.code,
            duration_ms=ctx.elapsed_ms(),
        )
        raise
    summary["username"] = admin.username
    structlog.get_logger(__name__).info(
        "token_issued",
        **summary,
        outcome="success",
        code=0,
        oid=admin.id,
        audience=scope.audience,
        duration_ms=ctx.elapsed_ms(),
    )
    return web.Response(
        body=orjson.dumps(body),
        content_type="application/json",
        charset="utf-8",
        headers=NO_STORE,
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post("/{tenant}/oauth2/v2.0/token", post_token, name="token")
