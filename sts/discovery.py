"""OpenID Connect discovery and the JWKS (OpenID Connect Discovery 1.0, RFC 7517).

`GET /{tenant}/v2.0/.well-known/openid-configuration` describes the tenant's endpoints in
Entra's shape, so that MSAL for Python (`instance_discovery=False`) finds its
`authorization_endpoint`, `token_endpoint` and `device_authorization_endpoint`. The URLs
always name the tenant by GUID, whichever spelling the request used (Entra does the
same), so the issuer is one string per tenant. `GET /{tenant}/discovery/v2.0/keys` is the
key set, the same for every tenant. An unknown tenant is AADSTS90002 on both.

Only what is implemented is advertised: public clients (`none` authentication), the
authorization code (PKCE S256 only), refresh token, password and device code grants,
ES256, and the `query` and `form_post` response modes of the authorize endpoint.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from common.contracts import CA_SCOPE
from sts.grants import SUPPORTED_GRANTS
from sts.issuance import ISSUER, OIDC_SCOPES
from sts.pkce import S256
from sts.signing import ALGORITHM
from sts.tenants import tenant_of

CLAIMS = "iss aud sub oid tid iat nbf exp nonce name preferred_username roles ver"

# Relying parties refresh the key set on an unknown kid; a day for discovery, an hour for
# keys, is what Entra serves too. CORS lets browser apps read both.
_DISCOVERY_HEADERS = {"Cache-Control": "max-age=86400, private", "Access-Control-Allow-Origin": "*"}
_JWKS_HEADERS = {"Cache-Control": "max-age=3600, public", "Access-Control-Allow-Origin": "*"}


def openid_configuration(public_url: str, tenant_id: str) -> dict[str, object]:
    """The discovery document of one tenant."""
    base = f"{public_url}/{tenant_id}"
    return {
        "issuer": f"{base}/v2.0",
        "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
        "token_endpoint": f"{base}/oauth2/v2.0/token",
        "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
        "jwks_uri": f"{base}/discovery/v2.0/keys",
        "response_types_supported": ["code"],
        "response_modes_supported": ["query", "form_post"],
        "grant_types_supported": list(SUPPORTED_GRANTS),
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [ALGORITHM],
        "token_endpoint_auth_methods_supported": ["none"],
        "code_challenge_methods_supported": [S256],
        "scopes_supported": [*OIDC_SCOPES, CA_SCOPE],
        "claims_supported": CLAIMS.split(),
        "request_uri_parameter_supported": False,
    }


async def get_openid_configuration(request: web.Request) -> web.Response:
    """`GET /{tenant}/v2.0/.well-known/openid-configuration`."""
    tenant = await tenant_of(request)
    public_url = request.app[ISSUER].public_url
    return web.Response(
        body=orjson.dumps(openid_configuration(public_url, tenant.id)),
        content_type="application/json",
        charset="utf-8",
        headers=_DISCOVERY_HEADERS,
    )


async def get_keys(request: web.Request) -> web.Response:
    """`GET /{tenant}/discovery/v2.0/keys`: every published signing key."""
    await tenant_of(request)
    return web.Response(
        body=request.app[ISSUER].keys.jwks_json(),
        content_type="application/json",
        charset="utf-8",
        headers=_JWKS_HEADERS,
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get(
        "/{tenant}/v2.0/.well-known/openid-configuration",
        get_openid_configuration,
        name="openid_configuration",
    )
    app.router.add_get("/{tenant}/discovery/v2.0/keys", get_keys, name="jwks")
