"""OAuth errors with their wire identity, and the one middleware that renders them.

Handlers raise; `error_middleware` renders. Each class carries the OAuth `error`, the
AADSTS code and the HTTP status; its docstring is the default description (docs/contributing.md
section 5). JSON keeps Entra's shape (docs/design.md §5):

    {"error": "invalid_grant", "error_description": "AADSTS50126: ...",
     "error_codes": [50126], "timestamp": "2025-01-01 00:00:00Z",
     "trace_id": "<uuid>", "correlation_id": "<uuid>"}

Browser routes (route names starting with `page.`) get an HTML page showing the same code
and correlation id instead. Codes are Entra's where Entra has one for the situation
(reference-error-codes on learn.microsoft.com); the choices where it has none:
- the agent- and database-side failures (800xx except 80004, 90033) are
  `temporarily_unavailable` with HTTP 503: the user's credentials may be fine, so telling
  the client `invalid_grant` would be a lie;
- `slow_down` (RFC 8628 section 3.5) reuses 70016, the code of the pending state;
- a declined device code is `access_denied` (RFC 8628) with 65004 (user declined);
- malformed, oversized or repeated parameters and a failed CSRF check are 90100
  (InvalidRequestParameter); a missing one is 900144.
Messages never contain a password, a code or a token; an unexpected exception is logged
with its traceback and answered with a generic 500.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import ClassVar

import orjson
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from common.wire import Status
from sts import pages
from sts.correlation import context_of

BROWSER_ROUTE_PREFIX = "page."
"""Routes named with this prefix are browser pages: their errors are rendered as HTML."""

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class StsError(Exception):
    """The security token service failed."""


class OAuthError(StsError):
    """The request is not valid."""

    error: ClassVar[str] = "invalid_request"
    code: ClassVar[int | None] = 90100
    status: ClassVar[int] = 400

    def __init__(self, description: str | None = None) -> None:
        default = (type(self).__doc__ or type(self).__name__).strip().splitlines()[0]
        self.description = description or default
        super().__init__(self.message)

    @property
    def message(self) -> str:
        """The description with its AADSTS prefix, as Entra writes it."""
        return f"AADSTS{self.code}: {self.description}" if self.code else self.description


# --------------------------------------------------------------------------- the request


class InvalidParameter(OAuthError):
    """A request parameter is empty or not valid."""


class MissingParameter(OAuthError):
    """The request body must contain a parameter it lacks."""

    code = 900144

    def __init__(self, name: str) -> None:
        super().__init__(f"The request body must contain the following parameter: '{name}'.")


class TenantNotFound(OAuthError):
    """Tenant not found. Check the tenant ID or domain name in the URL."""

    code = 90002

    def __init__(self, segment: str = "") -> None:
        # Echo the segment only when it is short and printable: it comes from the URL.
        shown = segment if 0 < len(segment) <= 80 and segment.isprintable() else ""
        super().__init__(
            f"Tenant '{shown}' not found. Check to make sure you have the correct tenant ID "
            "or verified domain name, and that you are signing in to the right cloud."
            if shown
            else None
        )


class EndpointNotFound(OAuthError):
    """There is no such endpoint. Check the URL against the discovery document."""

    code = None
    status = 404


class MethodNotAllowed(OAuthError):
    """The endpoint does not accept this HTTP method."""

    code = 900561
    status = 405

    def __init__(self, allowed: frozenset[str] = frozenset()) -> None:
        self.allowed = allowed
        shown = ", ".join(sorted(allowed))
        super().__init__(f"The endpoint only accepts {shown} requests." if shown else None)


class RequestTooLarge(OAuthError):
    """The request body is too large."""

    status = 413


class CsrfRejected(OAuthError):
    """This form has expired or was not sent from this site. Reload the page and retry."""


# --------------------------------------------------------------------------- the client


class UnknownClient(OAuthError):
    """The application was not found in this tenant's directory. Check the client_id."""

    error = "unauthorized_client"
    code = 700016


class ClientAuthenticationRequired(OAuthError):
    """This application is confidential; it must authenticate, which is not supported yet."""

    error = "invalid_client"
    code = 7000218
    status = 401


class UnsupportedGrantType(OAuthError):
    """The grant_type is not supported by this endpoint."""

    error = "unsupported_grant_type"
    code = 70003


class InvalidScope(OAuthError):
    """The provided value for the input parameter 'scope' is not valid."""

    error = "invalid_scope"
    code = 70011


# --------------------------------------------------------------------------- the user


class GrantError(OAuthError):
    """The provided grant is invalid or malformed."""

    error = "invalid_grant"
    code = 70000


class InvalidCredentials(GrantError):
    """Error validating credentials due to invalid username or password."""

    code = 50126


class UserNotFound(GrantError):
    """The user account does not exist in this tenant's directory."""

    code = 50034


class AccountLocked(GrantError):
    """The account is locked. Try again later, or ask your administrator to unlock it."""

    code = 50053


class SmartLockout(AccountLocked):
    """The account is locked for a while after too many failed sign-ins. Try again later."""


class PasswordMustChange(GrantError):
    """The password must be changed before signing in. Change it on-premises, then retry."""

    code = 50055


class AccountDisabled(GrantError):
    """The user account is disabled or has expired."""

    code = 50057


class PasswordExpired(GrantError):
    """The user's Active Directory password has expired."""

    code = 50144


class LegacyAuthenticationBlocked(GrantError):
    """This tenant blocks the password grant (legacy authentication). Use the device code flow."""

    code = 53003


class InvalidUsername(GrantError):
    """The username passed to the agent was not valid."""

    code = 80004


class LogonHoursInvalid(GrantError):
    """The user tried to sign in outside the allowed hours or from a workstation not allowed."""

    # the table of docs/design.md §5: logon_hours answers AADSTS50053 (Entra's 80012 is not used).
    code = 50053


class InvalidDeviceCode(GrantError):
    """The device code is not valid: unknown, already used, or issued to another client."""


# --------------------------------------------------------------------------- device flow


class AuthorizationPending(OAuthError):
    """Authorization is pending: the user has not finished signing in. Continue polling."""

    error = "authorization_pending"
    code = 70016


class SlowDown(OAuthError):
    """Polling too fast: wait the interval between polls, increased by 5 seconds."""

    error = "slow_down"
    code = 70016


class DeviceCodeExpired(OAuthError):
    """The device code has expired. Start the device code flow again."""

    error = "expired_token"
    code = 70019


class AuthorizationDeclined(OAuthError):
    """The user declined the sign-in on the device login page."""

    error = "access_denied"
    code = 65004


# --------------------------------------------------------------------------- the service


class ServiceUnavailable(OAuthError):
    """A transient error has occurred. Try again."""

    error = "temporarily_unavailable"
    code = 90033
    status = 503


class DatabaseUnavailable(ServiceUnavailable):
    """A transient error has occurred (directory store unavailable). Try again."""


class NoAgentAvailable(ServiceUnavailable):
    """Unable to connect to Active Directory: no authentication agent is connected."""

    code = 80001


class AgentTimeout(ServiceUnavailable):
    """A timeout occurred connecting to Active Directory."""

    code = 80002


class AgentReplyInvalid(ServiceUnavailable):
    """The authentication agent's answer could not be verified."""

    code = 80003


class AgentFailed(ServiceUnavailable):
    """Validation encountered an unexpected error on the authentication agent. Retry."""

    code = 80005


class DirectoryError(ServiceUnavailable):
    """An error occurred communicating with Active Directory."""

    code = 80007


class AgentDecryptFailed(ServiceUnavailable):
    """The authentication agent could not decrypt the password."""

    code = 80010


class AgentKeyNotFound(ServiceUnavailable):
    """The authentication agent's key was not found in the request."""

    code = 80011


class AgentClockSkew(ServiceUnavailable):
    """The authentication agent's clock is too far from the service's."""

    code = 80013


class AgentLateReply(ServiceUnavailable):
    """The authentication agent answered after the deadline."""

    code = 80014


class ServerError(OAuthError):
    """There was an error issuing a token. Try again; if it persists, contact support."""

    error = "server_error"
    code = 50000
    status = 500


AGENT_STATUS_ERRORS: dict[Status, type[OAuthError]] = {
    Status.INVALID_CREDENTIALS: InvalidCredentials,
    Status.PASSWORD_EXPIRED: PasswordExpired,
    Status.MUST_CHANGE_PASSWORD: PasswordMustChange,
    Status.ACCOUNT_LOCKED: AccountLocked,
    Status.ACCOUNT_DISABLED: AccountDisabled,
    Status.ACCOUNT_EXPIRED: AccountDisabled,
    Status.LOGON_HOURS: LogonHoursInvalid,
    Status.INVALID_USERNAME: InvalidUsername,
    Status.DIRECTORY_UNAVAILABLE: DirectoryError,
    Status.DIRECTORY_TIMEOUT: AgentTimeout,
    Status.DECRYPT_FAILED: AgentDecryptFailed,
    Status.KEY_NOT_FOUND: AgentKeyNotFound,
    Status.AGENT_ERROR: AgentFailed,
}
"""the table of docs/design.md §5: the error for each agent status other than success."""


# --------------------------------------------------------------------------- rendering


def entra_timestamp(now: dt.datetime) -> str:
    """Entra's timestamp format: `2025-01-09 02:02:12Z`."""
    return now.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def error_body(
    exc: OAuthError, *, trace_id: str, correlation_id: str, now: dt.datetime
) -> dict[str, object]:
    """The Entra-shaped JSON body of an error."""
    stamp = entra_timestamp(now)
    return {
        "error": exc.error,
        "error_description": (
            f"{exc.message}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}"
            f"\r\nTimestamp: {stamp}"
        ),
        "error_codes": [exc.code] if exc.code else [],
        "timestamp": stamp,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
    }


def is_browser_route(request: web.Request) -> bool:
    """True when the matched route is a page for people rather than an API."""
    name = request.match_info.route.name
    return bool(name and name.startswith(BROWSER_ROUTE_PREFIX))


def render(request: web.Request, exc: OAuthError) -> web.Response:
    """The response for `exc`: JSON for APIs, an HTML page for browser routes."""
    ctx = context_of(request)
    now = dt.datetime.now(dt.UTC)
    headers = dict(NO_STORE)
    if isinstance(exc, MethodNotAllowed) and exc.allowed:
        headers["Allow"] = ", ".join(sorted(exc.allowed))
    if is_browser_route(request):
        html = pages.error_page(
            code=f"AADSTS{exc.code}" if exc.code else exc.error,
            message=exc.description,
            correlation_id=ctx.correlation_id,
            timestamp=entra_timestamp(now),
        )
        return pages.html_response(html, status=exc.status, headers=headers)
    body = error_body(exc, trace_id=ctx.trace_id, correlation_id=ctx.correlation_id, now=now)
    return web.Response(
        body=orjson.dumps(body),
        status=exc.status,
        content_type="application/json",
        charset="utf-8",
        headers=headers,
    )


def _from_http(exc: web.HTTPException) -> OAuthError:
    if exc.status == 404:
        return EndpointNotFound()
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return MethodNotAllowed(frozenset(exc.allowed_methods))
    if exc.status == 413:
        return RequestTooLarge()
    if exc.status >= 500:
        return ServerError()
    return InvalidParameter()


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render OAuthError, aiohttp's HTTP errors and unexpected faults (docs/contributing.md §5)."""
    try:
        return await handler(request)
    except OAuthError as exc:
        return render(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:  # redirects are answers, not errors
            raise
        return render(request, _from_http(exc))
    except asyncio.CancelledError:
        raise
    except Exception:
        # The top of a request: log the fault with its traceback, answer a generic 500.
        structlog.get_logger(__name__).exception(
            "request_failed", method=request.method, path=request.path
        )
        return render(request, ServerError())
