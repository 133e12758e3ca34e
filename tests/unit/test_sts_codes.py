"""Authorization codes and refresh tokens without a database (sts.codes), and the token
response a synced user gets from them (sts.issuance)."""

from __future__ import annotations

import hashlib
import uuid

import jwt
import pytest

from common import pki
from sts.codes import (
    GRANT_FIELDS,
    AuthorizationCodeRedeemed,
    AuthorizedUser,
    PkceMismatch,
    RefreshTokenRevoked,
    _narrowed,
    hash_secret,
    new_secret,
)
from sts.errors import GrantError, InvalidScope
from sts.grants import CODE_GRANTS
from sts.issuance import TokenIssuer, parse_scope
from sts.signin import SignedInUser
from sts.signing import SigningKey, SigningKeys

APP = "6f1c3c1e-8d0c-4d43-9c0d-0d8a5a7e9a11"
TENANT = "11111111-1111-4111-8111-111111111111"
USER = AuthorizedUser(
    id="33333333-3333-4333-8333-333333333333",
    tenant_id=TENANT,
    username="alice@contoso.test",
    display_name="Alice Active",
    immutable_id="entry-uuid-1",
)


def test_secrets_are_256_bit_and_stored_as_sha256() -> None:
    values = {new_secret() for _ in range(100)}
    assert len(values) == 100
    assert all(len(v) == 43 for v in values)  # 32 bytes, base64url without padding
    assert hash_secret("abc") == hashlib.sha256(b"abc").hexdigest()
    assert hash_secret("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    code = new_secret()
    assert code not in hash_secret(code) and len(hash_secret(code)) == 64


def test_grant_fields_and_names() -> None:
    assert CODE_GRANTS == ("authorization_code", "refresh_token")
    assert set(GRANT_FIELDS) == {"code", "redirect_uri", "code_verifier", "refresh_token"}
    assert GRANT_FIELDS["code_verifier"] == 128


def test_errors_carry_their_entra_codes() -> None:
    assert (AuthorizationCodeRedeemed().error, AuthorizationCodeRedeemed().code) == (
        "invalid_grant",
        54005,
    )
    assert PkceMismatch().code == 501481 and isinstance(PkceMismatch(), GrantError)
    assert RefreshTokenRevoked().message.startswith("AADSTS50173: ")


def test_authorized_user_from_a_sign_in_and_back() -> None:
    signed = SignedInUser(
        id=USER.id,
        tenant_id=TENANT,
        username=USER.username,
        display_name=USER.display_name,
        immutable_id=USER.immutable_id,
        agent_id=str(uuid.uuid4()),
    )
    user = AuthorizedUser.signed_in(signed)
    assert user == USER and user.roles == ()
    assert AuthorizedUser.granted(TENANT, user.snapshot()) == user


def _issuer() -> TokenIssuer:
    keys = SigningKeys([SigningKey.from_private_key(pki.new_ec_key())])
    return TokenIssuer(keys, "https://sts.test", 3600)


def test_token_response_for_a_browser_sign_in() -> None:
    issuer = _issuer()
    scope = parse_scope(f"{APP}/.default openid profile offline_access", APP)
    body = issuer.token_response(
        USER,
        client_id=APP,
        scope=scope,
        now=1_700_000_000,
        nonce="n-0S6_WzA2Mj",
        auth_time=1_699_999_990,
        refresh_token="rt",
    )
    assert body["refresh_token"] == "rt"
    assert body["scope"] == f"{APP}/.default openid profile offline_access"
    claims = jwt.decode(str(body["id_token"]), options={"verify_signature": False})
    assert claims["aud"] == APP and claims["nonce"] == "n-0S6_WzA2Mj"
    assert claims["auth_time"] == 1_699_999_990
    assert claims["sub"] == claims["oid"] == USER.id and claims["tid"] == TENANT
    assert claims["preferred_username"] == USER.username and claims["name"] == USER.display_name
    access = jwt.decode(str(body["access_token"]), options={"verify_signature": False})
    assert access["aud"] == APP and access["roles"] == []


def test_without_a_refresh_token_offline_access_is_not_granted() -> None:
    scope = parse_scope("openid offline_access", APP)
    body = _issuer().token_response(USER, client_id=APP, scope=scope, now=1)
    assert "refresh_token" not in body and body["scope"] == "openid"


def test_an_app_may_ask_for_its_own_resource_only() -> None:
    for own in (f"{APP}/.default", f"api://{APP}/.default"):
        scope = parse_scope(f"{own} openid", APP)
        assert scope.audience == APP and scope.resource_scope == own
    other = str(uuid.uuid4())
    with pytest.raises(InvalidScope):
        parse_scope(f"{other}/.default", APP)


def test_a_refresh_may_narrow_the_scope_never_widen_it() -> None:
    granted = f"{APP}/.default openid profile offline_access"
    assert _narrowed(granted, None, APP) == parse_scope(granted, APP)
    assert _narrowed(granted, "openid offline_access", APP).oidc == ("openid", "offline_access")
    with pytest.raises(InvalidScope, match="email"):
        _narrowed(granted, "openid email", APP)
    with pytest.raises(InvalidScope):
        _narrowed("openid", f"{APP}/.default", APP)
