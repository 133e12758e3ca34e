"""The token endpoint: `POST /{tenant}/oauth2/v2.0/token` (RFC 6749 section 3.2).

Form-encoded fields, validated at the edge (`sts.forms`). Checks run in this order, and
the first failure is the answer:
1. the tenant (AADSTS90002), the body (90100: not a form, a field repeated, too long);
2. `grant_type` present (900144) and supported (70003 unsupported_grant_type):
   `password`, `urn:ietf:params:oauth:grant-type:device_code`, `authorization_code` or
   `refresh_token`;
3. `client_id` present, and `pta-agent` or a public app of this tenant (700016, 7000218);
4. the grant:
   - password: refused when the tenant blocks legacy authentication (53003); `scope`
     (70011); `username`, `password` (900144); then a cloud-only admin of the tenant is
     verified by the STS (wrong password 50126), and anyone else goes to the tenant's
     agents through `sts.signin.PASSWORD_VALIDATOR` (`sts.passwords`: unknown user
     50034, smart lockout 50053, the agent's answer by the table of docs/design.md §5, 800xx when
     the agents cannot answer).
   - device code: see `sts.devicecode.redeem`.
   - authorization code (with PKCE) and refresh token: see `sts.codes` (the code's own
     scope, nonce and user; a refresh token is rotated on every use).
Success is `{"token_type": "Bearer", "access_token", "expires_in", "ext_expires_in",
"scope"}` plus `id_token` when `openid` was asked for, `refresh_token` when a browser
sign-in asked for `offline_access`, and `client_info` when MSAL asks
(`client_info=1`), sent with `Cache-Control: no-store` (RFC 6749 section 5.1).

Each request logs one summary line, `token_issued` or `token_refused`, with the grant,
outcome, AADSTS code, client, username and duration; never a password, code or token.
"""

from __future__ import annotations

import time

import orjson
import structlog
from aiohttp import web

from sts.admins import ADMINS
from sts.clients import Client, resolve_client
from sts.codes import GRANT_FIELDS, AuthorizedUser, exchange
from sts.correlation import context_of
from sts.devicecode import DEVICE_FLOW, redeem
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
from sts.grants import CODE_GRANTS, PASSWORD_GRANT, SUPPORTED_GRANTS
from sts.issuance import ISSUER, Principal, Scope, parse_scope
from sts.queries import DATABASE
from sts.signin import PASSWORD_VALIDATOR, SignInContext
from sts.tenants import Tenant, tenant_of

TOKEN_FIELDS = {
    "grant_type": GRANT_TYPE_MAX,
    "client_id": CLIENT_ID_MAX,
    "scope": SCOPE_MAX,
    "username": USERNAME_MAX,
    "password": PASSWORD_MAX,
    "device_code": DEVICE_CODE_MAX,
    "client_info": SHORT_MAX,
    **GRANT_FIELDS,
}
SECRET_FIELDS = frozenset({"password", "device_code"})


async def _password_grant(
    request: web.Request, tenant: Tenant, client: Client, form: Form
) -> tuple[Principal, Scope]:
    """Resource owner password credentials (RFC 6749 section 4.3).

    A cloud-only admin of the tenant is verified here (argon2id, `sts.admins`); anyone
    else is a synced user whose password the tenant's agents check
    (`sts.signin.PASSWORD_VALIDATOR`: lockout, dispatch, the table of docs/design.md §5).
    """
    if tenant.block_legacy_auth:
        raise LegacyAuthenticationBlocked()
    scope = parse_scope(form.get("scope"), client.client_id)
    username = form.require("username")
    password = form.require("password")
    admins = request.app[ADMINS]
    if (row := await admins.find(tenant.uuid, username)) is not None:
        return await admins.verify(tenant.uuid, username, password, row=row), scope
    ctx = context_of(request)
    context = SignInContext(
        correlation_id=ctx.correlation_id,
        client_id=client.client_id,
        client_ip=request.remote or "",
        flow="password_grant",
    )
    user = await request.app[PASSWORD_VALIDATOR].validate(tenant, username, password, context)
    return AuthorizedUser.signed_in(user), scope


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
        admin: Principal
        body: dict[str, object] | None = None
        if grant in CODE_GRANTS:  # sts.codes: authorization_code (PKCE S256), refresh_token
            issued = await exchange(request, grant, tenant, client, form)
            admin, scope, body = issued.user, issued.scope, issued.body
        elif grant == PASSWORD_GRANT:
            admin, scope = await _password_grant(request, tenant, client, form)
        else:  # DEVICE_CODE_GRANT, the only other supported grant
            admin, scope = await redeem(
                request.app[DEVICE_FLOW], tenant, client, form.require("device_code")
            )
        if body is None:
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
