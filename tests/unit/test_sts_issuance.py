"""Scopes and claims of the STS's tokens (sts.issuance)."""

from __future__ import annotations

import base64
import json

import jwt
import pytest

from common import pki
from sts.admins import Admin
from sts.errors import InvalidScope
from sts.issuance import TokenIssuer, parse_scope
from sts.signing import SigningKey, SigningKeys

AGENT = "pta-agent"
APP = "6f1c3c1e-8d0c-4d43-9c0d-0d8a5a7e9a11"
TENANT = "11111111-1111-4111-8111-111111111111"
ADMIN = Admin(
    id="22222222-2222-4222-8222-222222222222",
    tenant_id=TENANT,
    username="admin@contoso.test",
    display_name="Contoso Administrator",
    roles=("hybrid_identity_admin",),
)


def test_ca_scope_makes_the_ca_audience() -> None:
    scope = parse_scope("urn:pta:ca/.default openid profile offline_access", AGENT)
    assert scope.audience == "urn:pta:ca"
    assert scope.has_openid
    assert scope.granted == "urn:pta:ca/.default openid profile"  # no refresh token yet
    assert parse_scope(scope.canonical, AGENT) == scope


def test_without_a_resource_the_audience_is_the_client() -> None:
    scope = parse_scope("openid  openid profile", APP)
    assert (scope.audience, scope.oidc) == (APP, ("openid", "profile"))
    assert parse_scope(None, APP).audience == APP


@pytest.mark.parametrize(
    ("raw", "client"),
    [
        ("urn:pta:ca/.default", APP),  # the CA scope is for the agent client only
        ("https://graph.microsoft.com/.default", AGENT),
        ("urn:pta:ca/register", AGENT),
        ("OPENID", AGENT),  # scopes are case-sensitive (RFC 6749 section 3.3)
        (" ".join(f"s{i}" for i in range(25)), AGENT),
    ],
)
def test_other_scopes_are_invalid(raw: str, client: str) -> None:
    with pytest.raises(InvalidScope) as caught:
        parse_scope(raw, client)
    assert caught.value.code == 70011


@pytest.fixture(scope="module")
def issuer() -> TokenIssuer:
    keys = SigningKeys([SigningKey.from_private_key(pki.new_ec_key())])
    return TokenIssuer(keys, "https://sts.test", 600)


def test_token_response_claims(issuer: TokenIssuer) -> None:
    scope = parse_scope("urn:pta:ca/.default openid", AGENT)
    body = issuer.token_response(
        ADMIN, client_id=AGENT, scope=scope, now=1_700_000_000, with_client_info=True
    )
    assert body["expires_in"] == 600 and body["token_type"] == "Bearer"
    kid = jwt.get_unverified_header(str(body["access_token"]))["kid"]
    key = issuer.keys.public_key(kid)
    assert key is not None
    claims = jwt.decode(
        str(body["access_token"]),
        key,
        algorithms=["ES256"],
        audience="urn:pta:ca",
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    assert claims["iss"] == f"https://sts.test/{TENANT}/v2.0"
    assert (claims["iat"], claims["nbf"], claims["exp"]) == (1_700_000_000,) * 2 + (1_700_000_600,)
    assert claims["roles"] == ["hybrid_identity_admin"] and claims["azp"] == AGENT
    assert claims["oid"] == claims["sub"] == ADMIN.id and claims["tid"] == TENANT
    id_claims = jwt.decode(str(body["id_token"]), options={"verify_signature": False})
    assert id_claims["aud"] == AGENT and "roles" not in id_claims and "nonce" not in id_claims
    info = str(body["client_info"])
    decoded = json.loads(base64.urlsafe_b64decode(info + "=" * (-len(info) % 4)))
    assert decoded == {"uid": ADMIN.id, "utid": TENANT}


def test_no_id_token_without_openid_and_nonce_when_given(issuer: TokenIssuer) -> None:
    scope = parse_scope("urn:pta:ca/.default", AGENT)
    body = issuer.token_response(ADMIN, client_id=AGENT, scope=scope, now=1)
    assert "id_token" not in body and "client_info" not in body
    claims = issuer.id_token_claims(ADMIN, client_id=AGENT, now=1, nonce="n-1")
    assert claims["nonce"] == "n-1"


def test_token_ids_are_unique(issuer: TokenIssuer) -> None:
    scope = parse_scope(None, AGENT)
    a = issuer.access_token_claims(ADMIN, client_id=AGENT, scope=scope, now=1)
    b = issuer.access_token_claims(ADMIN, client_id=AGENT, scope=scope, now=1)
    assert a["jti"] != b["jti"]
