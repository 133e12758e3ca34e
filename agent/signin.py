"""Admin access tokens from the STS, for registering and deleting agents (docs/design.md §3.1).

The CA names its authority at ``GET {ca}/.well-known/pta-configuration``; the agent is the
public client ``pta-agent`` and asks for scope ``urn:pta:ca/.default``
(docs/architecture.md). Two ways to sign in:
- device code (RFC 8628), for a person: ``POST {sts}/{tenant}/oauth2/v2.0/devicecode``,
  show the message with the verification URL and user code, then poll
  ``POST {sts}/{tenant}/oauth2/v2.0/token`` at the interval the STS gives, 5 s more after
  each ``slow_down`` (section 3.5), until a token, ``expired_token`` or a refusal;
- resource owner password (RFC 6749 section 4.3), for scripts: the password comes from
  standard input (``cli``), never from argv, and is never logged or put in an exception.

Every call is HTTPS verified with the caller's SSL context (the service TLS CA bundle).
OAuth errors become ``OAuthError``, shown as ``AADSTSnnnnn: description`` plus what to do.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from agent.errors import AgentError
from agent.https import HttpsClient, ProtocolError, Response, printable
from common.contracts import AGENT_CLIENT_ID, CA_SCOPE

CONFIGURATION_PATH = "/.well-known/pta-configuration"
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEFAULT_POLL_INTERVAL_S = 5.0  # RFC 8628 section 3.2
SLOW_DOWN_STEP_S = 5.0  # RFC 8628 section 3.5

# What the operator can do about an AADSTS code (docs/design.md §5).
_CODE_HINTS: dict[int, str] = {
    50126: "Check the username and password of the tenant admin.",
    50034: "No such account in this tenant: check the username and --tenant.",
    50053: "The account is locked: wait for the lockout to end, then try once, carefully.",
    50057: "The account is disabled or expired: use another admin, or re-enable it.",
    50055: "The password has expired: change it, then try again.",
    50144: "The password has expired: change it, then try again.",
    50076: "The sign-in needs a second factor: use --device-code instead.",
    50079: "The sign-in needs a second factor: use --device-code instead.",
    90002: "No such tenant: check --tenant (a verified domain name or the tenant id).",
    90019: "No such tenant: check --tenant (a verified domain name or the tenant id).",
    53003: "A policy blocks this sign-in: use --device-code, or ask the tenant's admins.",
    700016: "The STS does not know the client pta-agent: check --server and its version.",
}
_PTA_HINT = (
    "The tenant's pass-through agents could not validate the password: sign in with a "
    "cloud-only admin account, or check the agents that are already running."
)
_ERROR_HINTS: dict[str, str] = {
    "invalid_grant": "Check the username and password of the tenant admin.",
    "unsupported_grant_type": "The tenant blocks the password grant: use --device-code.",
    "invalid_client": "The STS refused the client pta-agent: check --server.",
    "unauthorized_client": "The STS refused the client pta-agent: check --server.",
    "invalid_scope": "The STS does not know the CA's scope: check --server.",
    "invalid_request": "The STS refused the request: check --tenant and --server.",
    "access_denied": "The sign-in was declined: run the command again and approve it.",
    "authorization_declined": "The sign-in was declined: run the command again and approve it.",
    "expired_token": "The code expired before the sign-in finished: run the command again.",
    "bad_verification_code": "The STS lost the device code: run the command again.",
    "temporarily_unavailable": "The STS is busy: try again in a minute.",
    "server_error": "The STS failed: try again later, or ask its operator.",
}
_DEFAULT_HINT = "Check --tenant and the account, then try again."


class SignInError(AgentError):
    """The admin sign-in failed."""


class OAuthError(SignInError):
    """The STS refused the sign-in."""

    def __init__(
        self, *, error: str, description: str, codes: tuple[int, ...], status: int
    ) -> None:
        self.error = error
        self.description = description
        self.codes = codes
        self.status = status
        super().__init__(message=render_oauth_error(error, description, codes))


class DeviceCodeExpired(SignInError):
    """The device code expired before the sign-in was completed: run the command again
    and finish the sign-in in the browser within the time shown."""


class DeviceCodeDeclined(SignInError):
    """The sign-in was declined in the browser: run the command again and approve it."""


class PtaConfiguration(BaseModel):
    """``GET {ca}/.well-known/pta-configuration`` (docs/architecture.md)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    authority: str
    client_id: str = AGENT_CLIENT_ID
    scope: str = CA_SCOPE
    crl_url: str | None = None

    @field_validator("authority")
    @classmethod
    def _https(cls, value: str) -> str:
        if not value.startswith("https://"):
            raise ValueError("must be an https:// URL")
        return value.rstrip("/")


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A bearer token for the CA; its value never appears in a repr or a log."""

    value: str = field(repr=False)
    expires_in_s: float


@dataclass(frozen=True, slots=True)
class DeviceCode:
    """A device authorization (RFC 8628 section 3.2); ``message`` is for the operator."""

    device_code: str = field(repr=False)
    user_code: str
    verification_uri: str
    expires_in_s: float
    interval_s: float
    message: str


@dataclass(frozen=True, slots=True)
class DeviceCodeLogin:
    """Sign in as a person: ``show`` presents the device code message to the operator."""

    show: Callable[[DeviceCode], None]


@dataclass(frozen=True, slots=True)
class PasswordLogin:
    """Sign in with a username and password (read from standard input by the CLI)."""

    username: str
    password: str = field(repr=False)


Login = DeviceCodeLogin | PasswordLogin


class _DeviceCodeAnswer(BaseModel):
    model_config = ConfigDict(extra="ignore")

    device_code: str
    user_code: str
    # Entra's v1 endpoint and older drafts of RFC 8628 spell it verification_url.
    verification_uri: str = Field(
        validation_alias=AliasChoices("verification_uri", "verification_url")
    )
    expires_in: float = Field(gt=0)
    interval: float = Field(default=DEFAULT_POLL_INTERVAL_S, gt=0)
    message: str = ""


class _TokenAnswer(BaseModel):
    model_config = ConfigDict(extra="ignore")

    access_token: str
    token_type: str
    expires_in: float = 3600


def render_oauth_error(error: str, description: str, codes: tuple[int, ...]) -> str:
    """``AADSTSnnnnn: description`` (first line only, as Entra adds trace lines), then a
    line saying what to do. Server text is stripped of control characters and shortened.
    """
    first = printable(description.splitlines()[0] if description else "")
    code = codes[0] if codes else _code_in(first)
    if not first:
        first = f"AADSTS{code}: {error}" if code is not None else error or "unknown error"
    elif code is not None and not first.startswith("AADSTS"):
        first = f"AADSTS{code}: {first}"
    if code is not None and 80001 <= code <= 80014:
        hint = _PTA_HINT
    else:
        hint = (_CODE_HINTS.get(code) if code is not None else None) or _ERROR_HINTS.get(
            error, _DEFAULT_HINT
        )
    return f"{first}\n{hint}"


def next_poll_interval(error: str, interval_s: float) -> float | None:
    """How long to wait before polling again after ``error`` (RFC 8628 section 3.5).

    Raises DeviceCodeExpired or DeviceCodeDeclined for those final answers; returns None
    for any other error, which the caller raises as the OAuthError it holds.
    """
    if error == "authorization_pending":
        return interval_s
    if error == "slow_down":
        return interval_s + SLOW_DOWN_STEP_S
    if error in ("expired_token", "code_expired"):
        raise DeviceCodeExpired()
    if error in ("access_denied", "authorization_declined"):
        raise DeviceCodeDeclined()
    return None


async def discover(
    ca_url: str, *, ssl_context: ssl.SSLContext, trust: str, timeout_s: float
) -> PtaConfiguration:
    """Read the CA's configuration: which STS (authority), client id and scope to use.

    Raises Unreachable, ServerNotTrusted, ProtocolError (https errors).
    """
    async with HttpsClient(
        ca_url, ssl_context=ssl_context, timeout_s=timeout_s, trust=trust, service="the CA"
    ) as http:
        answer = await http.call("GET", CONFIGURATION_PATH)
    if answer.status != 200:
        raise ProtocolError(f"{answer.url} answered HTTP {answer.status}: is {ca_url} the PTA CA?")
    return answer.parse(PtaConfiguration)


class TokenClient:
    """OAuth client of one tenant at one STS (``authority`` is the STS base URL)."""

    def __init__(
        self,
        authority: str,
        tenant: str,
        *,
        ssl_context: ssl.SSLContext,
        trust: str,
        timeout_s: float,
        client_id: str = AGENT_CLIENT_ID,
        scope: str = CA_SCOPE,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = HttpsClient(
            authority, ssl_context=ssl_context, timeout_s=timeout_s, trust=trust,
            service="the STS",
        )  # fmt: skip
        self._base = f"/{quote(tenant, safe='')}/oauth2/v2.0"
        self._client_id = client_id
        self._scope = scope
        self._sleep = sleep
        self._clock = clock

    async def __aenter__(self) -> TokenClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._http.close()

    async def sign_in(self, login: Login) -> AccessToken:
        """Get an access token for the CA with ``login``. Raises SignInError, https errors."""
        if isinstance(login, PasswordLogin):
            return await self.password(login.username, login.password)
        device = await self.start_device_code()
        login.show(device)
        return await self.wait_for_device_code(device)

    async def password(self, username: str, password: str) -> AccessToken:
        """Resource owner password grant (RFC 6749 section 4.3)."""
        form = {
            "grant_type": "password",
            "client_id": self._client_id,
            "scope": self._scope,
            "username": username,
            "password": password,
        }
        return _token(await self._http.call("POST", f"{self._base}/token", form=form))

    async def start_device_code(self) -> DeviceCode:
        """Device authorization request (RFC 8628 section 3.1)."""
        answer = await self._http.call(
            "POST",
            f"{self._base}/devicecode",
            form={"client_id": self._client_id, "scope": self._scope},
        )
        if answer.status != 200:
            raise _oauth_error(answer)
        parsed = answer.parse(_DeviceCodeAnswer)
        message = printable(parsed.message) or (
            f"To sign in, open {parsed.verification_uri} in a browser and enter the code "
            f"{parsed.user_code}."
        )
        return DeviceCode(
            device_code=parsed.device_code,
            user_code=printable(parsed.user_code),
            verification_uri=printable(parsed.verification_uri),
            expires_in_s=parsed.expires_in,
            interval_s=parsed.interval,
            message=message,
        )

    async def wait_for_device_code(self, device: DeviceCode) -> AccessToken:
        """Poll the token endpoint until the person signs in (RFC 8628 section 3.4).

        Raises DeviceCodeExpired (also when ``expires_in`` passes locally),
        DeviceCodeDeclined, OAuthError.
        """
        deadline = self._clock() + device.expires_in_s
        interval = device.interval_s
        form = {
            "grant_type": DEVICE_CODE_GRANT,
            "client_id": self._client_id,
            "device_code": device.device_code,
        }
        while True:
            await self._sleep(interval)
            if self._clock() >= deadline:
                raise DeviceCodeExpired()
            answer = await self._http.call("POST", f"{self._base}/token", form=form)
            if answer.status == 200:
                return _token(answer)
            error = _oauth_error(answer)
            next_interval = next_poll_interval(error.error, interval)
            if next_interval is None:
                raise error
            interval = next_interval


async def acquire_admin_token(
    ca_url: str,
    tenant: str,
    login: Login,
    *,
    ssl_context: ssl.SSLContext,
    trust: str,
    timeout_s: float,
) -> AccessToken:
    """Discover the CA's authority, then sign in to ``tenant`` there with ``login``.

    Raises SignInError and the https errors.
    """
    config = await discover(ca_url, ssl_context=ssl_context, trust=trust, timeout_s=timeout_s)
    async with TokenClient(
        config.authority, tenant, ssl_context=ssl_context, trust=trust, timeout_s=timeout_s,
        client_id=config.client_id, scope=config.scope,
    ) as client:  # fmt: skip
        return await client.sign_in(login)


def _token(answer: Response) -> AccessToken:
    if answer.status != 200:
        raise _oauth_error(answer)
    parsed = answer.parse(_TokenAnswer)
    if parsed.token_type.lower() != "bearer":
        raise ProtocolError(f"The STS issued a {parsed.token_type!r} token, not a bearer token.")
    return AccessToken(value=parsed.access_token, expires_in_s=parsed.expires_in)


def _oauth_error(answer: Response) -> OAuthError:
    """The OAuth error of an answer (RFC 6749 section 5.2), whatever shape it has."""
    try:
        body: Any = answer.json()
    except ProtocolError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("error"), str):
        return OAuthError(
            error="server_error",
            description=f"the STS answered HTTP {answer.status} without an OAuth error",
            codes=(),
            status=answer.status,
        )
    raw_codes = body.get("error_codes")
    codes = tuple(c for c in raw_codes if isinstance(c, int)) if isinstance(raw_codes, list) else ()
    description = body.get("error_description")
    return OAuthError(
        error=body["error"],
        description=description if isinstance(description, str) else "",
        codes=codes,
        status=answer.status,
    )


def _code_in(text: str) -> int | None:
    match = re.match(r"AADSTS(\d+)", text)
    return int(match.group(1)) if match else None
