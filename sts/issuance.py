"""What a token says: scopes, claims and the token response (docs/architecture.md).

Every grant ends here once it knows who signed in. Scope rules (RFC 6749 section 3.3,
space-separated, case-sensitive, at most `MAX_SCOPES` items):
- OpenID scopes `openid`, `profile`, `email`, `offline_access` may always be asked for;
  `openid` adds an ID token. `offline_access` adds a refresh token to the authorization
  code grant (`sts.codes`); the password and device code grants accept it (MSAL always
  adds it) and do not grant it.
- At most one resource scope, and only `urn:pta:ca/.default`, only for the first-party
  client `pta-agent`: it makes the access token's audience `urn:pta:ca`, which the CA
  accepts for agent registration. Other apps cannot get a CA token (least privilege).
- An app may ask for its own resource, `{client_id}/.default` or
  `api://{client_id}/.default`: the audience is the client id, as without one.
- Without a resource scope the access token's audience is the client id.
Anything else is AADSTS70011 invalid_scope.

Claims: access tokens carry `iss` (`{public_url}/{tenant id}/v2.0`), `aud`, `tid`, `oid`,
`sub` (= `oid`: one stable subject for every relying party, "public" subject type),
`preferred_username`, `name`, `roles`, `azp` (the client), `ver` "2.0", `jti`, `iat`,
`nbf`, `exp`. ID tokens (docs/design.md) carry `iss`, `aud` (the client), `sub`, `oid`, `tid`,
`preferred_username`, `name`, `ver`, `iat`, `nbf`, `exp`, and `nonce` when one was sent,
`auth_time` when the grant knows when the user signed in (browser sign-in).
Tokens are about a `Principal`: a cloud-only admin or a synced user (roles empty).
Authorization rests on `roles`; delegated scopes (`scp`) are not modelled yet.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Final, Protocol

import orjson
from aiohttp import web

from common.contracts import AGENT_CLIENT_ID, CA_AUDIENCE, CA_SCOPE
from common.encoding import b64url
from sts.errors import InvalidScope
from sts.signing import SigningKeys

OIDC_SCOPES: Final = ("openid", "profile", "email", "offline_access")
MAX_SCOPES: Final = 20
_NOT_GRANTED: Final = frozenset({"offline_access"})


class Principal(Protocol):
    """Who a token is about: an admin (`sts.admins.Admin`) or a synced user."""

    @property
    def id(self) -> str: ...
    @property
    def tenant_id(self) -> str: ...
    @property
    def username(self) -> str: ...
    @property
    def display_name(self) -> str: ...
    @property
    def roles(self) -> tuple[str, ...]: ...


@dataclass(frozen=True, slots=True)
class Scope:
    """A validated scope request."""

    audience: str
    resource_scope: str | None
    oidc: tuple[str, ...]

    @property
    def has_openid(self) -> bool:
        return "openid" in self.oidc

    @property
    def granted(self) -> str:
        """The `scope` of the token response: what the access token is good for."""
        items = [self.resource_scope] if self.resource_scope else []
        items += [s for s in self.oidc if s not in _NOT_GRANTED]
        return " ".join(items)

    @property
    def canonical(self) -> str:
        """The request as stored with a device code (re-parsed at redemption)."""
        items = [self.resource_scope] if self.resource_scope else []
        return " ".join([*items, *self.oidc])


def parse_scope(raw: str | None, client_id: str) -> Scope:
    """Validate a `scope` parameter for `client_id`; raises InvalidScope (AADSTS70011)."""
    items = list(dict.fromkeys((raw or "").split(" ")))
    items = [item for item in items if item]
    if len(items) > MAX_SCOPES:
        raise InvalidScope(f"At most {MAX_SCOPES} scopes may be requested.")
    resource: str | None = None
    oidc: list[str] = []
    for item in items:
        if item in OIDC_SCOPES:
            oidc.append(item)
        elif item == CA_SCOPE:
            if client_id != AGENT_CLIENT_ID:
                raise InvalidScope(
                    f"The scope '{CA_SCOPE}' is only for client '{AGENT_CLIENT_ID}'."
                )
            resource = item
        elif item in (f"{client_id}/.default", f"api://{client_id}/.default"):
            resource = item  # the app's own API: the audience stays the client id
        else:
            shown = item if len(item) <= 100 else item[:100] + "..."
            raise InvalidScope(
                f"The provided value for the input parameter 'scope' is not valid. "
                f"The scope '{shown}' does not exist."
            )
    audience = CA_AUDIENCE if resource == CA_SCOPE else client_id
    return Scope(audience=audience, resource_scope=resource, oidc=tuple(oidc))


def _b64url_json(value: dict[str, str]) -> str:
    return b64url(orjson.dumps(value))


@dataclass(frozen=True, slots=True)
class TokenIssuer:
    """Signs the tokens of every grant with the process's key set."""

    keys: SigningKeys
    public_url: str
    lifetime_s: int

    def issuer(self, tenant_id: str) -> str:
        """The `iss` of the tenant's tokens, also its discovery document's `issuer`."""
        return f"{self.public_url}/{tenant_id}/v2.0"

    def access_token_claims(
        self, admin: Principal, *, client_id: str, scope: Scope, now: int
    ) -> dict[str, object]:
        return {
            "aud": scope.audience,
            "iss": self.issuer(admin.tenant_id),
            "iat": now,
            "nbf": now,
            "exp": now + self.lifetime_s,
            "azp": client_id,
            "tid": admin.tenant_id,
            "oid": admin.id,
            "sub": admin.id,
            "preferred_username": admin.username,
            "name": admin.display_name,
            "roles": list(admin.roles),
            "ver": "2.0",
            "jti": secrets.token_urlsafe(16),
        }

    def id_token_claims(
        self,
        admin: Principal,
        *,
        client_id: str,
        now: int,
        nonce: str | None = None,
        auth_time: int | None = None,
    ) -> dict[str, object]:
        claims: dict[str, object] = {
            "aud": client_id,
            "iss": self.issuer(admin.tenant_id),
            "iat": now,
            "nbf": now,
            "exp": now + self.lifetime_s,
            "tid": admin.tenant_id,
            "oid": admin.id,
            "sub": admin.id,
            "preferred_username": admin.username,
            "name": admin.display_name,
            "ver": "2.0",
        }
        if nonce:
            claims["nonce"] = nonce
        if auth_time is not None:
            claims["auth_time"] = auth_time
        return claims

    def token_response(
        self,
        admin: Principal,
        *,
        client_id: str,
        scope: Scope,
        now: int,
        with_client_info: bool = False,
        nonce: str | None = None,
        auth_time: int | None = None,
        refresh_token: str | None = None,
    ) -> dict[str, object]:
        """The successful token response (RFC 6749 section 5.1, with Entra's extras)."""
        access = self.keys.sign(
            self.access_token_claims(admin, client_id=client_id, scope=scope, now=now)
        )
        body: dict[str, object] = {
            "token_type": "Bearer",
            "scope": scope.granted,
            "expires_in": self.lifetime_s,
            "ext_expires_in": self.lifetime_s,
            "access_token": access,
        }
        if refresh_token is not None:
            body["refresh_token"] = refresh_token
            body["scope"] = " ".join(filter(None, (scope.granted, "offline_access")))
        if scope.has_openid:
            body["id_token"] = self.keys.sign(
                self.id_token_claims(
                    admin, client_id=client_id, now=now, nonce=nonce, auth_time=auth_time
                )
            )
        if with_client_info:
            # Entra's client_info (MSAL builds its account id from it): uid.utid.
            body["client_info"] = _b64url_json({"uid": admin.id, "utid": admin.tenant_id})
        return body


ISSUER = web.AppKey("issuer", TokenIssuer)
