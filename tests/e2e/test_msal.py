"""MSAL for Python, unmodified, signs a synced user in through the whole stack.

`PublicClientApplication(..., instance_discovery=False)` with TLS verified against the
stack's CA bundle; the username/password flow first asks the STS's user realm endpoint,
then the token endpoint; the password is validated by an agent against slapd.
"""

from __future__ import annotations

import asyncio
from typing import Any

import jwt
import msal
import pytest

from infra.stack import Stack
from tests.e2e.support import stack_doc, tenant_doc, user_password

pytestmark = pytest.mark.stack


def _app(stack: Stack, domain: str) -> tuple[msal.PublicClientApplication, dict[str, Any]]:
    doc = stack_doc(stack)
    tenant = tenant_doc(stack, domain)
    app = msal.PublicClientApplication(
        tenant["app"]["client_id"],
        authority=f"{doc['sts_url']}/{tenant['id']}",
        instance_discovery=False,
        verify=doc["ca_bundle"],
    )
    return app, tenant


@pytest.fixture(autouse=True)
def _no_ca_override(msal_verifies_with_our_bundle: None) -> None:
    """Every test here is an MSAL one (see tests/conftest.py)."""


async def test_msal_username_password_returns_a_verified_id_token(stack: Stack) -> None:
    def sign_in() -> tuple[dict[str, Any], dict[str, Any]]:
        app, tenant = _app(stack, "contoso.test")
        result = app.acquire_token_by_username_password(
            "alice@contoso.test",
            user_password(stack, "alice@contoso.test"),
            scopes=[f"{tenant['app']['client_id']}/.default"],
        )
        return result, tenant

    result, tenant = await asyncio.to_thread(sign_in)
    assert "id_token" in result, result
    claims = result["id_token_claims"]
    assert claims["preferred_username"] == "alice@contoso.test"
    assert claims["tid"] == tenant["id"]
    # MSAL checked iss/aud/nonce; verify the signature against the JWKS ourselves.
    doc = stack_doc(stack)
    jwks_client = jwt.PyJWKClient(
        f"{doc['sts_url']}/{tenant['id']}/discovery/v2.0/keys",
        ssl_context=__import__("ssl").create_default_context(cafile=doc["ca_bundle"]),
    )
    key = await asyncio.to_thread(jwks_client.get_signing_key_from_jwt, result["id_token"])
    verified = jwt.decode(
        result["id_token"], key.key, algorithms=["ES256"], audience=tenant["app"]["client_id"]
    )
    assert verified["oid"] == claims["oid"]


async def test_msal_wrong_password_is_invalid_grant_50126(stack: Stack) -> None:
    def sign_in() -> dict[str, Any]:
        app, tenant = _app(stack, "contoso.test")
        result: dict[str, Any] = app.acquire_token_by_username_password(
            "bob@contoso.test",
            "definitely-wrong",
            scopes=[f"{tenant['app']['client_id']}/.default"],
        )
        return result

    result = await asyncio.to_thread(sign_in)
    assert result.get("error") == "invalid_grant", result
    assert 50126 in result.get("error_codes", []), result
