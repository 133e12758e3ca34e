"""The browser sign-in: `GET` and `POST /{tenant}/oauth2/v2.0/authorize` (RFC 6749 4.1).

An app sends the user's browser here; the user sees a username page, then a password
page (plain server-rendered HTML, no JavaScript, labelled fields), the password is checked
by the tenant's agents (`sts.signin.PASSWORD_VALIDATOR`), and the browser goes back to the
app with an authorization code (`sts.codes`) that the app redeems at the token endpoint
with its PKCE verifier.

The authorize request is validated at the edge, in this order:
1. the query (`sts.forms` rules: repeated, oversized or control-character values) and
   the tenant (AADSTS90002);
2. `client_id`: an app of this tenant (700016; a confidential app 7000218);
3. `redirect_uri`: exactly one of the app's registered URIs (50011).
   Until this point every error is an HTML page, NEVER a redirect: an unchecked
   redirect_uri would make the STS an open redirector (RFC 6749 section 4.1.2.1);
4. after it, errors go back to the redirect_uri as `error`, `error_description` (with the
   AADSTS code and correlation id) and `state`: `response_mode` `query` (default) or
   `form_post` (else 90100); `response_type` `code` (70005 unsupported_response_type);
   `scope` required (900144) and valid (70011; `sts.issuance.parse_scope`);
   `code_challenge` with `code_challenge_method=S256` required (9002325; `plain` 90100;
   a challenge that is not 43 base64url characters 501491): only public clients are
   served, and PKCE is what binds their code to them; `prompt`: `login`,
   `select_account`, `consent` (no sessions are kept, so every request signs in afresh)
   or `none` (always `login_required` 50058); `state`, `nonce`, `login_hint` (prefills
   the username) optional.

The pages POST back to the same URL with the flow's parameters in hidden fields, a `step`
(`username` or `password`) and a CSRF token. Every POST is checked for CSRF first (the
double-submit cookie and `Origin` check of `sts.devicelogin`; a failure is an HTML page,
AADSTS90100), then the parameters are validated again exactly as above: nothing in a
hidden field is trusted. Then:
- username step: `user@domain` whose domain is a verified domain of this tenant (else
  AADSTS50034 on the page: home-realm discovery), then the password page;
- password step: the same username checks, an empty password refused before anything is
  asked, then the validator. A `GrantError` (50126 wrong password or unknown user, 50053,
  50055, 50057, 50144, ...) shows the password page again with a message for people, the
  AADSTS code and the correlation id (50034 shows the username page); a
  `ServiceUnavailable` (80001, 80002, ...) is the error page with code and correlation id.
  Success stores an authorization code and answers with a 302 to
  `redirect_uri?code=...&state=...`, or the form_post page.
The password is never put in a page, a redirect, a log line or an error.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlencode, urlsplit, urlunsplit

import structlog
from aiohttp import web

from sts import pkce
from sts.clients import Client, resolve_client
from sts.codes import REDIRECT_URI_MAX, AuthorizedUser, CodeRequest, Codes
from sts.correlation import context_of
from sts.csrf import CSRF_FIELD, check_csrf, csrf_cookie_token, with_csrf_cookie
from sts.errors import (
    BROWSER_ROUTE_PREFIX,
    NO_STORE,
    AccountDisabled,
    AccountLocked,
    GrantError,
    InvalidCredentials,
    InvalidParameter,
    InvalidUsername,
    LogonHoursInvalid,
    OAuthError,
    PasswordExpired,
    PasswordMustChange,
    ServerError,
    StsError,
    TenantNotFound,
    UserNotFound,
    entra_timestamp,
    error_body,
)
from sts.forms import (
    CLIENT_ID_MAX,
    PASSWORD_MAX,
    SCOPE_MAX,
    SHORT_MAX,
    USERNAME_MAX,
    Form,
    parse_form,
    read_form,
)
from sts.issuance import Scope, parse_scope
from sts.pages import (
    AUTO_SUBMIT_SCRIPT,
    Notice,
    content_security_policy,
    form_post_page,
    html_response,
    sign_in_password_page,
    sign_in_username_page,
)
from sts.queries import DATABASE
from sts.settings import SETTINGS
from sts.signin import PASSWORD_VALIDATOR, SignInContext
from sts.tenants import TENANTS, Tenant, parse_segment, tenant_of

STATE_MAX: Final = 2048
NONCE_MAX: Final = 512

AUTHORIZE_FIELDS: Final = {
    "client_id": CLIENT_ID_MAX,
    "redirect_uri": REDIRECT_URI_MAX,
    "response_type": SHORT_MAX,
    "response_mode": SHORT_MAX,
    "scope": SCOPE_MAX,
    "state": STATE_MAX,
    "nonce": NONCE_MAX,
    "code_challenge": SHORT_MAX,
    "code_challenge_method": SHORT_MAX,
    "prompt": SHORT_MAX,
    "login_hint": USERNAME_MAX,
}
"""The authorize request's parameters and their limits (unknown ones are ignored)."""

CARRIED: Final = tuple(name for name in AUTHORIZE_FIELDS if name != "login_hint")
"""The parameters that ride in the pages' hidden fields, re-validated on every POST."""

PAGE_FIELDS: Final = {
    **{name: AUTHORIZE_FIELDS[name] for name in CARRIED},
    CSRF_FIELD: SHORT_MAX,
    "step": SHORT_MAX,
    "username": USERNAME_MAX,
    "password": PASSWORD_MAX,
}

PROMPTS: Final = frozenset({"login", "select_account", "consent", "none"})

_USERNAME_LOCAL = re.compile(r"[^\s@]{1,64}")

USER_MESSAGES: Final[tuple[tuple[type[OAuthError], str], ...]] = (
    (InvalidCredentials, "Your account or password is incorrect."),
    (UserNotFound, "We couldn't find an account with that username. Check it, or try another."),
    (LogonHoursInvalid, "You can't sign in at this time or from this device. Ask your admin."),
    (
        AccountLocked,  # the directory's lockout and smart lockout alike
        "Your account is locked to prevent unauthorized use. Try again later, or contact "
        "your administrator.",
    ),
    (
        PasswordMustChange,
        "You must change your password before you can sign in. Change it on your "
        "organization's network, then sign in again.",
    ),
    (AccountDisabled, "Your account is disabled or has expired. Contact your administrator."),
    (
        PasswordExpired,
        "Your password has expired. Change it on your organization's network, then sign in again.",
    ),
    (InvalidUsername, "That username can't be used to sign in. Check it, or ask your admin."),
)
"""What people read for each sign-in refusal, first match (code and correlation id follow);
any other error shows its own description."""


# --------------------------------------------------------------------------- errors


class RedirectUriNotRegistered(OAuthError):
    """The redirect URI in the request does not match the redirect URIs registered for the
    application. Check the redirect_uri, or register it for the app."""

    code = 50011


class UnsupportedResponseType(OAuthError):
    """The response_type is not supported: only 'code' (the authorization code flow)."""

    error = "unsupported_response_type"
    code = 70005


class PkceRequired(OAuthError):
    """Proof Key for Code Exchange is required: send code_challenge with
    code_challenge_method=S256."""

    code = 9002325


class InvalidCodeChallenge(OAuthError):
    """Invalid size of the code_challenge parameter: an S256 challenge is 43 base64url
    characters."""

    code = 501491


class LoginRequired(OAuthError):
    """A silent sign-in request was sent but no user is signed in (prompt=none)."""

    error = "login_required"
    code = 50058


@dataclass(frozen=True, slots=True)
class ReplyTarget:
    """Where and how answers go once the redirect_uri is known to be registered."""

    redirect_uri: str
    state: str | None
    response_mode: str


class RedirectedError(StsError):
    """An error to send back to the client's (validated) redirect_uri."""

    def __init__(self, error: OAuthError, target: ReplyTarget) -> None:
        super().__init__(error.message)
        self.error = error
        self.target = target


@dataclass(frozen=True, slots=True)
class AuthorizeRequest:
    """A validated authorize request."""

    tenant: Tenant
    client: Client
    target: ReplyTarget
    scope: Scope
    nonce: str | None
    code_challenge: str
    carried: Mapping[str, str]  # the raw validated parameters, for the hidden fields

    @property
    def action(self) -> str:
        return f"/{self.tenant.id}/oauth2/v2.0/authorize"

    @property
    def restart_url(self) -> str:
        """This request again, from the username page."""
        return f"{self.action}?{urlencode(self.carried)}"


# --------------------------------------------------------------------------- validation


async def validate_request(request: web.Request, tenant: Tenant, params: Form) -> AuthorizeRequest:
    """Check an authorize request (module docstring, steps 2 to 4).

    Raises OAuthError before the redirect_uri is validated (an HTML page), RedirectedError
    after it.
    """
    client = await resolve_client(request.app[DATABASE], tenant, params.require("client_id"))
    redirect_uri = params.require("redirect_uri")
    registered: tuple[str, ...] = ()
    if _is_uuid(client.client_id):
        registered = await request.app[DATABASE].app_redirect_uris(
            tenant.uuid, uuid.UUID(client.client_id)
        )
    if redirect_uri not in registered:  # exact string comparison (Security BCP 4.1.3)
        raise RedirectUriNotRegistered()
    mode = params.get("response_mode") or "query"
    target = ReplyTarget(
        redirect_uri, params.get("state"), mode if mode in ("query", "form_post") else "query"
    )
    try:
        return _validate_protocol(tenant, client, target, params, mode)
    except OAuthError as exc:
        raise RedirectedError(exc, target) from None


def _validate_protocol(
    tenant: Tenant, client: Client, target: ReplyTarget, params: Form, mode: str
) -> AuthorizeRequest:
    if mode != target.response_mode:
        raise InvalidParameter("The response_mode must be 'query' or 'form_post'.")
    response_type = params.require("response_type")
    if response_type != "code":
        raise UnsupportedResponseType()
    scope = parse_scope(params.require("scope"), client.client_id)
    challenge = params.get("code_challenge")
    if challenge is None:
        raise PkceRequired()
    if params.get("code_challenge_method") != pkce.S256:
        raise InvalidParameter("The code_challenge_method must be 'S256'; 'plain' is not accepted.")
    if not pkce.is_valid_challenge(challenge):
        raise InvalidCodeChallenge()
    prompt = params.get("prompt")
    if prompt is not None and prompt not in PROMPTS:
        raise InvalidParameter(
            "The prompt must be one of 'login', 'select_account', 'consent' or 'none'."
        )
    if prompt == "none":  # no session is ever kept: a silent sign-in cannot succeed
        raise LoginRequired()
    carried = {name: value for name in CARRIED if (value := params.get(name)) is not None}
    return AuthorizeRequest(
        tenant=tenant,
        client=client,
        target=target,
        scope=scope,
        nonce=params.get("nonce"),
        code_challenge=challenge,
        carried=carried,
    )


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


async def _home_realm_notice(request: web.Request, tenant: Tenant, username: str) -> Notice | None:
    """Why `username` cannot sign in to `tenant`, or None when it may try.

    It must be `name@domain` with a verified domain of this tenant (home-realm
    discovery; another tenant's or an unknown domain is AADSTS50034). A GUID is not a
    domain, so `x@<tenant id>` does not pass.
    """
    local, at, domain = username.rpartition("@")
    is_domain = isinstance(parse_segment(domain), str)
    if not at or not _USERNAME_LOCAL.fullmatch(local) or not is_domain:
        return Notice("Enter your username as name@domain, for example alex@contoso.com.")
    try:
        owner: Tenant | None = await request.app[TENANTS].resolve(domain)
    except TenantNotFound:
        owner = None
    if owner is None or owner.id != tenant.id:
        return _refusal(request, UserNotFound())
    return None


# --------------------------------------------------------------------------- handlers


async def get_authorize(request: web.Request) -> web.Response:
    """`GET /{tenant}/oauth2/v2.0/authorize`: validate, then the username page."""
    tenant = await tenant_of(request)
    params = parse_form(
        request.rel_url.raw_query_string.encode("utf-8"),
        AUTHORIZE_FIELDS,
        secret_fields=frozenset(),
    )
    try:
        auth = await validate_request(request, tenant, params)
    except RedirectedError as exc:
        return _reply_error(request, exc)
    token = csrf_cookie_token(request, request.app[SETTINGS].is_https) or secrets.token_urlsafe(32)
    return _username_page(request, auth, token, params.get("login_hint") or "")


async def post_authorize(request: web.Request) -> web.Response:
    """`POST /{tenant}/oauth2/v2.0/authorize`: the username or password step."""
    settings = request.app[SETTINGS]
    tenant = await tenant_of(request)
    form = await read_form(request, PAGE_FIELDS, secret_fields=frozenset({"password"}))
    token = check_csrf(request, form.get(CSRF_FIELD), public_url=settings.public_url)
    try:
        auth = await validate_request(request, tenant, form)
    except RedirectedError as exc:
        return _reply_error(request, exc)
    step = form.get("step")
    if step not in ("username", "password"):
        raise InvalidParameter("The step must be 'username' or 'password'.")
    username = (form.get("username") or "").strip()
    if not username:
        return _username_page(request, auth, token, "", Notice("Enter your username."))
    notice = await _home_realm_notice(request, tenant, username)
    if notice is not None:
        return _username_page(request, auth, token, username, notice)
    if step == "username":
        return _password_page(request, auth, token, username)
    password = form.get("password")
    if password is None:  # refused before any agent is asked (an empty bind is anonymous)
        return _password_page(request, auth, token, username, Notice("Enter your password."))
    return await _sign_in(request, auth, token, username, password)


async def _sign_in(
    request: web.Request, auth: AuthorizeRequest, token: str, username: str, password: str
) -> web.Response:
    """Validate the password through the agents; a code on success."""
    ctx = context_of(request)
    log = structlog.get_logger(__name__)
    context = SignInContext(
        correlation_id=ctx.correlation_id,
        client_id=auth.client.client_id,
        client_ip=request.remote or "",
        flow="authorize",
    )
    try:
        signed_in = await request.app[PASSWORD_VALIDATOR].validate(
            auth.tenant, username, password, context
        )
    except GrantError as exc:
        log.info(
            "authorize_sign_in_refused",
            client_id=auth.client.client_id,
            username=username,
            outcome=exc.error,
            code=exc.code,
            duration_ms=ctx.elapsed_ms(),
        )
        notice = _refusal(request, exc)
        if isinstance(exc, UserNotFound):
            return _username_page(request, auth, token, username, notice)
        return _password_page(request, auth, token, username, notice)
    if signed_in.tenant_id != auth.tenant.id:  # never issue a code across tenants
        log.error("authorize_tenant_mismatch", user_tenant=signed_in.tenant_id)
        raise ServerError()
    user = AuthorizedUser.signed_in(signed_in)
    code = await Codes.of(request.app).issue_code(
        CodeRequest(
            tenant=auth.tenant,
            client_id=auth.client.client_id,
            redirect_uri=auth.target.redirect_uri,
            code_challenge=auth.code_challenge,
            nonce=auth.nonce,
            scope=auth.scope,
            user=user,
            auth_time=dt.datetime.now(dt.UTC),
        )
    )
    log.info(
        "authorization_code_issued",
        client_id=auth.client.client_id,
        username=user.username,
        oid=user.id,
        response_mode=auth.target.response_mode,
        duration_ms=ctx.elapsed_ms(),
    )
    return _reply(auth.target, {"code": code})


# --------------------------------------------------------------------------- answers


def _refusal(request: web.Request, exc: OAuthError) -> Notice:
    """The page notice for a refused sign-in: words for people, the code and the ids."""
    message = next((m for cls, m in USER_MESSAGES if isinstance(exc, cls)), exc.description)
    return Notice(
        message=message,
        code=f"AADSTS{exc.code}" if exc.code else exc.error,
        correlation_id=context_of(request).correlation_id,
        timestamp=entra_timestamp(dt.datetime.now(dt.UTC)),
    )


def _hidden(auth: AuthorizeRequest, token: str, step: str) -> dict[str, str]:
    return {**auth.carried, CSRF_FIELD: token, "step": step}


def _page(
    request: web.Request, auth: AuthorizeRequest, page: str, token: str, status: int
) -> web.Response:
    headers = {
        "Content-Security-Policy": content_security_policy(
            form_action=_csp_sources(auth.target.redirect_uri)
        )
    }
    response = html_response(page, status=status, headers=headers)
    return with_csrf_cookie(response, token, request.app[SETTINGS].is_https)


def _username_page(
    request: web.Request,
    auth: AuthorizeRequest,
    token: str,
    username: str,
    notice: Notice | None = None,
) -> web.Response:
    page = sign_in_username_page(
        action=auth.action,
        hidden=_hidden(auth, token, "username"),
        app_name=auth.client.name,
        username=username,
        username_max=USERNAME_MAX,
        notice=notice,
    )
    return _page(request, auth, page, token, 400 if notice else 200)


def _password_page(
    request: web.Request,
    auth: AuthorizeRequest,
    token: str,
    username: str,
    notice: Notice | None = None,
) -> web.Response:
    page = sign_in_password_page(
        action=auth.action,
        hidden={**_hidden(auth, token, "password"), "username": username},
        app_name=auth.client.name,
        username=username,
        restart_url=auth.restart_url,
        password_max=PASSWORD_MAX,
        notice=notice,
    )
    return _page(request, auth, page, token, 400 if notice else 200)


def _reply_error(request: web.Request, exc: RedirectedError) -> web.Response:
    """An error for the client, at its redirect_uri (RFC 6749 section 4.1.2.1)."""
    ctx = context_of(request)
    body = error_body(
        exc.error,
        trace_id=ctx.trace_id,
        correlation_id=ctx.correlation_id,
        now=dt.datetime.now(dt.UTC),
    )
    structlog.get_logger(__name__).info(
        "authorize_refused", outcome=exc.error.error, code=exc.error.code
    )
    return _reply(
        exc.target, {"error": exc.error.error, "error_description": str(body["error_description"])}
    )


def _reply(target: ReplyTarget, params: dict[str, str]) -> web.Response:
    """Send `params` (and the state) to the client: a 302, or the form_post page."""
    fields = {**params, **({"state": target.state} if target.state is not None else {})}
    if target.response_mode == "form_post":
        page = form_post_page(action=target.redirect_uri, fields=fields)
        csp = content_security_policy(
            form_action=_csp_sources(target.redirect_uri), script=AUTO_SUBMIT_SCRIPT
        )
        return html_response(page, headers={"Content-Security-Policy": csp})
    location = with_query(target.redirect_uri, fields)
    return web.Response(status=302, headers={"Location": location, **NO_STORE})


def with_query(uri: str, params: Mapping[str, str]) -> str:
    """`uri` with `params` added to its query (a registered URI may have one: RFC 6749
    section 3.1.2 says to keep it)."""
    parts = urlsplit(uri)
    query = "&".join(filter(None, (parts.query, urlencode(params))))
    return urlunsplit(parts._replace(query=query))


_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")
_HOST = re.compile(r"[a-z0-9.-]+|\[[0-9a-f:.]+\]")


def _csp_sources(redirect_uri: str) -> tuple[str, ...]:
    """The CSP source for a registered redirect_uri: its origin, or `scheme:` for an
    app's private scheme; nothing if it cannot be written safely in the header."""
    parts = urlsplit(redirect_uri)
    scheme = parts.scheme.lower()
    if not _SCHEME.fullmatch(scheme):
        return ()
    if scheme not in ("http", "https"):
        return (f"{scheme}:",)
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    if not _HOST.fullmatch(host):
        return ()
    try:
        port = parts.port
    except ValueError:
        return ()
    return (f"{scheme}://{host}" + (f":{port}" if port is not None else ""),)


def add_routes(app: web.Application) -> None:
    resource = app.router.add_resource(
        "/{tenant}/oauth2/v2.0/authorize", name=f"{BROWSER_ROUTE_PREFIX}authorize"
    )
    resource.add_route("GET", get_authorize)
    resource.add_route("POST", post_authorize)
