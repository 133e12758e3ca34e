"""Authorization codes and refresh tokens: issue, redeem, rotate, revoke.

The browser sign-in (`sts.authorize`) ends with an authorization code; the token endpoint
(`sts.token`) redeems it here (`grant_type=authorization_code`) and, when the sign-in
asked for `offline_access`, returns a refresh token it later rotates
(`grant_type=refresh_token`). Every secret is 256 random bits (`secrets.token_urlsafe`);
only its SHA-256 is stored (common/migrations/006_codes.sql), so the tables redeem
nothing if they leak. Everything is in PostgreSQL: any replica redeems what another issued.

Authorization codes (RFC 6749 section 4.1, RFC 7636):
- bound to the tenant, client, redirect_uri, PKCE S256 challenge, nonce and scope of the
  authorize request, and to the user the agents just validated; live
  `auth_code_lifetime_s` (60 s);
- single use: redemption is one atomic `UPDATE ... WHERE used_at IS NULL RETURNING`,
  and it consumes the code whatever follows (a wrong verifier, client or redirect_uri
  burns it: a code that was tried by someone else must not be redeemed later);
- a second redemption is AADSTS54005 and revokes the refresh tokens issued from the code
  (RFC 6749 section 4.1.2: the code was probably stolen). The code row is locked both
  when a token family is created from it and when a replay is recorded, so a replay
  racing the first redemption either stops it or revokes what it issued.

Refresh tokens (OAuth 2.0 Security BCP section 4.14.2, rotation):
- one family per sign-in, bound to tenant and client; each use marks the token used and
  issues its successor in the same transaction;
- a token lives `refresh_token_lifetime_s` from its issue (sliding, 24 h), never past its
  family's end, `refresh_token_max_lifetime_s` after the sign-in (90 days);
- presenting a token that was already rotated revokes the whole family (the legitimate
  client and the thief hold tokens of one family; neither can go on): two concurrent
  refreshes with one token are treated the same way;
- the user must still be synced (`users`): a user removed from the directory sync
  cannot refresh (their family is revoked); names are re-read from there;
- `scope` on refresh may narrow, never widen, the signed-in scope (RFC 6749 section 6).
  The token is used before the scope is checked: a refused refresh still consumes it.

Errors (`invalid_grant` unless noted): unknown code 70000, expired code 70008, code
already redeemed 54005, issued to another client or redirect_uri different 70000, PKCE
mismatch 501481, malformed code_verifier `invalid_request` 90100; unknown refresh token
70000, expired 700082, revoked or reused 50173. Messages never quote a code or token.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Final

import structlog
from aiohttp import web

from sts import pkce
from sts.clients import Client
from sts.errors import GrantError, InvalidParameter, InvalidScope
from sts.forms import Form
from sts.grants import AUTHORIZATION_CODE_GRANT
from sts.issuance import ISSUER, Scope, TokenIssuer, parse_scope
from sts.queries import (
    DATABASE,
    AuthorizationCodeRow,
    Database,
    GrantedUser,
    NewAuthorizationCode,
    NewRefreshFamily,
    RefreshFamilyRow,
    RefreshOutcome,
)
from sts.settings import SETTINGS
from sts.signin import SignedInUser
from sts.tenants import Tenant

SECRET_MAX: Final = 128  # ours are 43 characters; room for a client's own quoting
REDIRECT_URI_MAX: Final = 2048
GRANT_FIELDS: Final = {
    "code": SECRET_MAX,
    "redirect_uri": REDIRECT_URI_MAX,
    "code_verifier": pkce.VERIFIER_MAX,
    "refresh_token": SECRET_MAX,
}
"""The token endpoint's fields for the grants of this module (limits for `sts.forms`)."""


def new_secret() -> str:
    """A fresh code or refresh token: 256 random bits, base64url (43 characters)."""
    return secrets.token_urlsafe(32)


def hash_secret(value: str) -> str:
    """What is stored for a code or token: hex SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- errors


class InvalidAuthorizationCode(GrantError):
    """The provided value for the 'code' parameter is not valid."""


class AuthorizationCodeExpired(GrantError):
    """The provided authorization code has expired. Sign in again to get a new one."""

    code = 70008


class AuthorizationCodeRedeemed(GrantError):
    """OAuth2 Authorization code was already redeemed, please retry with a new valid code."""

    code = 54005


class RedirectUriMismatch(GrantError):
    """The redirect_uri does not match the one used in the authorization request."""


class PkceMismatch(GrantError):
    """The code_verifier does not match the code_challenge of the authorization request."""

    code = 501481


class InvalidRefreshToken(GrantError):
    """The refresh token is not valid: unknown, or issued to another client or tenant."""


class RefreshTokenExpired(GrantError):
    """The refresh token has expired due to inactivity. Sign in again."""

    code = 700082


class RefreshTokenRevoked(GrantError):
    """The provided grant has been revoked; a fresh sign-in is needed."""

    code = 50173


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class AuthorizedUser:
    """A synced user that tokens are issued to (an `sts.issuance.Principal`)."""

    id: str
    tenant_id: str
    username: str
    display_name: str
    immutable_id: str
    roles: tuple[str, ...] = ()  # synced users carry no directory roles (yet)

    @classmethod
    def signed_in(cls, user: SignedInUser) -> AuthorizedUser:
        return cls(user.id, user.tenant_id, user.username, user.display_name, user.immutable_id)

    @classmethod
    def granted(cls, tenant_id: str, user: GrantedUser) -> AuthorizedUser:
        return cls(str(user.id), tenant_id, user.username, user.display_name, user.immutable_id)

    def snapshot(self) -> GrantedUser:
        return GrantedUser(uuid.UUID(self.id), self.username, self.display_name, self.immutable_id)


@dataclass(frozen=True, slots=True)
class CodeRequest:
    """What an authorization code is bound to: the validated authorize request and user."""

    tenant: Tenant
    client_id: str
    redirect_uri: str
    code_challenge: str
    nonce: str | None
    scope: Scope
    user: AuthorizedUser
    auth_time: dt.datetime


@dataclass(frozen=True, slots=True)
class Issued:
    """A successful code or refresh grant: who, for what, and the token response body."""

    user: AuthorizedUser
    scope: Scope
    body: dict[str, object]


@dataclass(frozen=True, slots=True)
class Codes:
    """Issues and redeems codes and refresh tokens with the configured lifetimes."""

    db: Database
    code_lifetime_s: int
    refresh_lifetime_s: int
    refresh_max_lifetime_s: int

    @classmethod
    def of(cls, app: web.Application) -> Codes:
        settings = app[SETTINGS]
        return cls(
            db=app[DATABASE],
            code_lifetime_s=settings.auth_code_lifetime_s,
            refresh_lifetime_s=settings.refresh_token_lifetime_s,
            refresh_max_lifetime_s=settings.refresh_token_max_lifetime_s,
        )

    async def issue_code(self, request: CodeRequest) -> str:
        """Store a new authorization code for `request`; return the code."""
        code = new_secret()
        await self.db.insert_authorization_code(
            NewAuthorizationCode(
                code_hash=hash_secret(code),
                tenant_id=request.tenant.uuid,
                client_id=request.client_id,
                redirect_uri=request.redirect_uri,
                code_challenge=request.code_challenge,
                nonce=request.nonce,
                scope=request.scope.canonical,
                user=request.user.snapshot(),
                auth_time=request.auth_time,
                lifetime_s=self.code_lifetime_s,
            )
        )
        return code

    async def redeem_code(self, tenant: Tenant, code: str) -> AuthorizationCodeRow:
        """Consume `code`; raises InvalidAuthorizationCode or AuthorizationCodeRedeemed.

        The caller checks expiry, client, redirect_uri and PKCE on the returned row.
        """
        code_hash = hash_secret(code)
        row = await self.db.consume_authorization_code(code_hash, tenant.uuid)
        if row is not None:
            return row
        revoked = await self.db.replay_authorization_code(code_hash, tenant.uuid)
        if revoked is None:
            raise InvalidAuthorizationCode()
        structlog.get_logger(__name__).warning(
            "authorization_code_replayed", revoked_families=revoked
        )
        raise AuthorizationCodeRedeemed()

    async def start_refresh_family(
        self,
        *,
        tenant: Tenant,
        client_id: str,
        scope: Scope,
        user: AuthorizedUser,
        auth_time: dt.datetime,
        code: str,
    ) -> str:
        """The first refresh token of a sign-in; raises AuthorizationCodeRedeemed when
        the code was replayed while it was being redeemed."""
        token = new_secret()
        is_started = await self.db.start_refresh_family(
            NewRefreshFamily(
                family_id=uuid.uuid4(),
                token_hash=hash_secret(token),
                tenant_id=tenant.uuid,
                client_id=client_id,
                scope=scope.canonical,
                user=user.snapshot(),
                auth_time=auth_time,
                code_hash=hash_secret(code),
                lifetime_s=self.refresh_lifetime_s,
                max_lifetime_s=self.refresh_max_lifetime_s,
            )
        )
        if not is_started:
            raise AuthorizationCodeRedeemed()
        return token

    async def rotate(
        self, tenant: Tenant, client_id: str, token: str
    ) -> tuple[str, RefreshFamilyRow]:
        """Use `token` once: its successor, and the family (scope, user, auth_time).

        Raises InvalidRefreshToken, RefreshTokenExpired or RefreshTokenRevoked (reuse of
        a rotated token revokes its family first).
        """
        new_token = new_secret()
        rotation = await self.db.rotate_refresh_token(
            token_hash=hash_secret(token),
            new_token_hash=hash_secret(new_token),
            tenant_id=tenant.uuid,
            client_id=client_id,
            lifetime_s=self.refresh_lifetime_s,
        )
        log = structlog.get_logger(__name__)
        family = rotation.family
        if rotation.outcome is RefreshOutcome.REUSED:
            log.warning("refresh_token_reused", client_id=client_id, outcome="family_revoked")
            raise RefreshTokenRevoked(
                "The refresh token was already used; every token of this sign-in is now "
                "revoked. Sign in again."
            )
        if rotation.outcome is RefreshOutcome.UNKNOWN or family is None:
            raise InvalidRefreshToken()
        if rotation.outcome is RefreshOutcome.REVOKED:
            raise RefreshTokenRevoked()
        if rotation.outcome is RefreshOutcome.EXPIRED:
            raise RefreshTokenExpired()
        return new_token, family


# --------------------------------------------------------------------------- the grants


async def exchange(
    request: web.Request, grant: str, tenant: Tenant, client: Client, form: Form
) -> Issued:
    """The token endpoint's `authorization_code` and `refresh_token` grants.

    Raises the GrantError of the module docstring, InvalidParameter or MissingParameter.
    """
    codes = Codes.of(request.app)
    issuer = request.app[ISSUER]
    with_client_info = form.get("client_info") == "1"
    if grant == AUTHORIZATION_CODE_GRANT:
        return await _authorization_code(codes, issuer, tenant, client, form, with_client_info)
    return await _refresh_token(codes, issuer, tenant, client, form, with_client_info)


async def _authorization_code(
    codes: Codes,
    issuer: TokenIssuer,
    tenant: Tenant,
    client: Client,
    form: Form,
    with_client_info: bool,
) -> Issued:
    """RFC 6749 section 4.1.3 with RFC 7636 section 4.5; `scope` is the code's own."""
    code = form.require("code")
    redirect_uri = form.require("redirect_uri")
    verifier = form.require("code_verifier")
    if not pkce.is_valid_verifier(verifier):  # checked before the code is consumed
        raise InvalidParameter(
            "The code_verifier must be 43 to 128 characters of A-Z, a-z, 0-9, '-', '.', "
            "'_' and '~' (RFC 7636 section 4.1)."
        )
    row = await codes.redeem_code(tenant, code)
    if row.is_expired:
        raise AuthorizationCodeExpired()
    if row.client_id != client.client_id:
        raise InvalidAuthorizationCode("The authorization code was issued to another client.")
    if row.redirect_uri != redirect_uri:
        raise RedirectUriMismatch()
    if not pkce.matches(verifier, row.code_challenge):
        raise PkceMismatch()
    scope = parse_scope(row.scope, client.client_id)
    user = AuthorizedUser.granted(tenant.id, row.user)
    refresh_token = None
    if "offline_access" in scope.oidc:
        refresh_token = await codes.start_refresh_family(
            tenant=tenant,
            client_id=client.client_id,
            scope=scope,
            user=user,
            auth_time=row.auth_time,
            code=code,
        )
    body = issuer.token_response(
        user,
        client_id=client.client_id,
        scope=scope,
        now=int(time.time()),
        with_client_info=with_client_info,
        nonce=row.nonce,
        auth_time=int(row.auth_time.timestamp()),
        refresh_token=refresh_token,
    )
    return Issued(user, scope, body)


async def _refresh_token(
    codes: Codes,
    issuer: TokenIssuer,
    tenant: Tenant,
    client: Client,
    form: Form,
    with_client_info: bool,
) -> Issued:
    """RFC 6749 section 6, with rotation; the ID token has no nonce (OIDC Core 12.2)."""
    token = form.require("refresh_token")
    new_token, family = await codes.rotate(tenant, client.client_id, token)
    synced = await codes.db.synced_user(tenant.uuid, family.user.id)
    if synced is None:
        await codes.db.revoke_refresh_family(family.id, tenant.uuid, "user_not_synced")
        raise RefreshTokenRevoked("The user is no longer in this tenant's directory.")
    scope = _narrowed(family.scope, form.get("scope"), client.client_id)
    user = AuthorizedUser.granted(tenant.id, synced)
    body = issuer.token_response(
        user,
        client_id=client.client_id,
        scope=scope,
        now=int(time.time()),
        with_client_info=with_client_info,
        auth_time=int(family.auth_time.timestamp()),
        refresh_token=new_token,
    )
    return Issued(user, scope, body)


def _narrowed(granted: str, requested: str | None, client_id: str) -> Scope:
    """The scope of a refresh: the granted one, or a subset of it (RFC 6749 section 6)."""
    original = parse_scope(granted, client_id)
    if requested is None:
        return original
    scope = parse_scope(requested, client_id)
    extra = set(scope.canonical.split()) - set(original.canonical.split())
    if extra:
        shown = " ".join(sorted(extra))[:100]
        raise InvalidScope(f"The scope '{shown}' was not granted at sign-in; sign in again.")
    return scope
