"""STS discovery, JWKS and the password grant against a real PostgreSQL.

Admins of the demo tenants sign in with the password grant; tokens are verified with the
published JWKS. Errors keep Entra's shape. Cross-tenant sign-in is AADSTS50034: the admin
does not exist in the other tenant's directory (the same answer as any unknown user).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
import pytest_asyncio
import structlog
from structlog.contextvars import merge_contextvars

from infra.stack import Stack
from tests.support.sts_harness import AGENT, CA_SCOPE, Sts, error_of, running_sts

pytestmark = pytest.mark.stack


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def sts(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Sts]:
    async with running_sts(stack, tmp_path_factory.mktemp("sts-token")) as running:
        yield running


async def jwks_key(sts: Sts, tenant: str, kid: str) -> Any:
    r = await sts.client.get(f"/{tenant}/discovery/v2.0/keys")
    assert r.status == 200
    keys = {k["kid"]: k for k in (await r.json())["keys"]}
    return jwt.PyJWK(keys[kid]).key


# --------------------------------------------------------------------------- discovery


async def test_discovery_document_names_the_tenant_by_guid(sts: Sts) -> None:
    t = sts.contoso
    base = sts.settings.public_url
    for segment in (t.id, t.domain, t.domain.upper()):
        r = await sts.client.get(f"/{segment}/v2.0/.well-known/openid-configuration")
        assert r.status == 200, segment
        doc = await r.json()
        assert doc["issuer"] == f"{base}/{t.id}/v2.0"
        assert doc["token_endpoint"] == f"{base}/{t.id}/oauth2/v2.0/token"
        assert doc["authorization_endpoint"] == f"{base}/{t.id}/oauth2/v2.0/authorize"
        assert doc["device_authorization_endpoint"] == f"{base}/{t.id}/oauth2/v2.0/devicecode"
        assert doc["jwks_uri"] == f"{base}/{t.id}/discovery/v2.0/keys"
        assert doc["id_token_signing_alg_values_supported"] == ["ES256"]
        assert "password" in doc["grant_types_supported"]
        assert "urn:ietf:params:oauth:grant-type:device_code" in doc["grant_types_supported"]


async def test_jwks_publishes_p256_keys_with_thumbprint_kids(sts: Sts) -> None:
    r = await sts.client.get(f"/{sts.fabrikam.id}/discovery/v2.0/keys")
    (key,) = (await r.json())["keys"]
    assert key["kty"] == "EC" and key["crv"] == "P-256" and key["alg"] == "ES256"
    assert key["use"] == "sig" and len(key["kid"]) == 43
    assert "d" not in key  # never the private part


@pytest.mark.parametrize(
    "path",
    ["/nosuch.test/v2.0/.well-known/openid-configuration", f"/{uuid.uuid4()}/discovery/v2.0/keys",
     "/common/v2.0/.well-known/openid-configuration", "/not a domain!/discovery/v2.0/keys"],
)  # fmt: skip
async def test_unknown_tenant_is_90002(sts: Sts, path: str) -> None:
    r = await sts.client.get(path)
    assert r.status == 400
    assert error_of(await r.json()) == ("invalid_request", 90002)


# --------------------------------------------------------------------------- password grant


async def test_password_grant_token_verifies_with_the_jwks(sts: Sts) -> None:
    t = sts.contoso
    before = int(time.time())
    r = await sts.password_token(t, client_info="1")
    assert r.status == 200, await r.text()
    assert r.headers["Cache-Control"] == "no-store"
    body = await r.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == body["ext_expires_in"] == 3600
    assert body["scope"] == f"{CA_SCOPE} openid profile"
    assert "refresh_token" not in body
    header = jwt.get_unverified_header(body["access_token"])
    assert header["alg"] == "ES256"
    key = await jwks_key(sts, t.id, header["kid"])
    issuer = f"{sts.settings.public_url}/{t.id}/v2.0"
    claims = jwt.decode(
        body["access_token"], key, algorithms=["ES256"], audience="urn:pta:ca", issuer=issuer
    )
    assert claims["tid"] == t.id
    assert claims["roles"] == ["hybrid_identity_admin"]
    assert claims["preferred_username"] == t.admin_username
    assert claims["name"] == f"{t.name} Administrator"
    assert claims["sub"] == claims["oid"] and uuid.UUID(claims["oid"])
    assert claims["azp"] == AGENT
    assert before <= claims["iat"] == claims["nbf"] <= int(time.time())
    assert claims["exp"] - claims["iat"] == 3600
    id_claims = jwt.decode(
        body["id_token"], key, algorithms=["ES256"], audience=AGENT, issuer=issuer
    )
    assert id_claims["oid"] == claims["oid"] and id_claims["tid"] == t.id
    assert "roles" not in id_claims
    assert body["client_info"]  # MSAL's uid.utid


async def test_tenant_by_domain_gives_the_same_issuer(sts: Sts) -> None:
    t = sts.fabrikam
    r = await sts.token(
        t.domain.upper(), grant_type="password", client_id=AGENT, scope=CA_SCOPE,
        username=t.admin_username.upper(), password=t.admin_password,
    )  # fmt: skip
    assert r.status == 200, await r.text()
    claims = jwt.decode((await r.json())["access_token"], options={"verify_signature": False})
    assert claims["iss"] == f"{sts.settings.public_url}/{t.id}/v2.0"
    assert claims["tid"] == t.id


async def test_app_client_gets_a_token_for_itself(sts: Sts) -> None:
    t = sts.contoso
    r = await sts.password_token(t, client_id=t.app_client_id, scope="openid profile")
    assert r.status == 200, await r.text()
    body = await r.json()
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["aud"] == t.app_client_id and claims["azp"] == t.app_client_id
    assert body["scope"] == "openid profile"


async def test_wrong_password_is_50126_in_entra_shape(sts: Sts) -> None:
    correlation = str(uuid.uuid4())
    r = await sts.password_token(
        sts.contoso, password="Wrong-password-1", headers={"client-request-id": correlation}
    )
    assert r.status == 400
    assert r.headers["client-request-id"] == correlation
    assert r.headers["x-ms-request-id"]
    body = await r.json()
    assert set(body) == {
        "error", "error_description", "error_codes", "timestamp", "trace_id", "correlation_id",
    }  # fmt: skip
    assert body["error"] == "invalid_grant"
    assert body["error_codes"] == [50126]
    assert body["error_description"].startswith("AADSTS50126: ")
    assert body["correlation_id"] == correlation
    assert body["trace_id"] == r.headers["x-ms-request-id"]
    assert "Wrong-password-1" not in await r.text()


async def test_unknown_tenant_at_the_token_endpoint_is_90002(sts: Sts) -> None:
    r = await sts.token(
        "nosuch.test", grant_type="password", client_id=AGENT, username="a@b.c", password="x"
    )
    assert error_of(await r.json()) == ("invalid_request", 90002)


async def test_admin_of_one_tenant_cannot_sign_in_at_another(sts: Sts) -> None:
    contoso, fabrikam = sts.contoso, sts.fabrikam
    for segment in (fabrikam.id, fabrikam.domain):
        r = await sts.token(
            segment, grant_type="password", client_id=AGENT, scope=CA_SCOPE,
            username=contoso.admin_username, password=contoso.admin_password,
        )  # fmt: skip
        assert r.status == 400
        assert error_of(await r.json()) == ("invalid_grant", 50034)


async def test_legacy_auth_blocked_tenant_refuses_the_password_grant(sts: Sts) -> None:
    t = sts.fabrikam
    await sts.sql("UPDATE tenants SET block_legacy_auth = true WHERE id = $1", uuid.UUID(t.id))
    try:
        r = await sts.password_token(t)
        assert error_of(await r.json()) == ("invalid_grant", 53003)
    finally:
        await sts.sql("UPDATE tenants SET block_legacy_auth = false WHERE id = $1", uuid.UUID(t.id))


async def test_confidential_app_is_refused(sts: Sts) -> None:
    t = sts.contoso
    client_id = uuid.uuid4()
    await sts.sql(
        "INSERT INTO apps (client_id, tenant_id, name, is_public) VALUES ($1, $2, 'web', false)",
        client_id, uuid.UUID(t.id),
    )  # fmt: skip
    r = await sts.password_token(t, client_id=str(client_id), scope="openid")
    assert r.status == 401
    assert error_of(await r.json()) == ("invalid_client", 7000218)


BAD_FORMS: list[tuple[str, dict[str, str], tuple[str, int]]] = [
    ("missing grant_type", {"grant_type": ""}, ("invalid_request", 900144)),
    ("unsupported grant", {"grant_type": "client_credentials"}, ("unsupported_grant_type", 70003)),
    ("10 KB username", {"username": "a" * 10_240 + "@contoso.test"}, ("invalid_request", 90100)),
    ("long password", {"password": "p" * 257}, ("invalid_request", 90100)),
    ("missing client_id", {"client_id": ""}, ("invalid_request", 900144)),
    ("unknown client_id", {"client_id": str(uuid.uuid4())}, ("unauthorized_client", 700016)),
    ("not a client_id", {"client_id": "someone-else"}, ("unauthorized_client", 700016)),
    ("missing username", {"username": ""}, ("invalid_request", 900144)),
    ("missing password", {"password": ""}, ("invalid_request", 900144)),
    ("unknown scope", {"scope": "https://graph.microsoft.com/.default"}, ("invalid_scope", 70011)),
    ("newline in username", {"username": "admin@contoso.test\n"}, ("invalid_request", 90100)),
    ("unknown admin", {"username": "nobody@contoso.test"}, ("invalid_grant", 50034)),
]


@pytest.mark.parametrize(("case", "changes", "expected"), BAD_FORMS, ids=[c[0] for c in BAD_FORMS])
async def test_bad_inputs_get_their_oauth_error(
    sts: Sts, case: str, changes: dict[str, str], expected: tuple[str, int]
) -> None:
    t = sts.contoso
    form = {
        "grant_type": "password", "client_id": AGENT, "scope": CA_SCOPE,
        "username": t.admin_username, "password": t.admin_password, **changes,
    }  # fmt: skip
    r = await sts.token(t.id, None, **form)
    assert r.status == 400, case
    assert error_of(await r.json()) == expected, case


async def test_ca_scope_is_only_for_the_agent_client(sts: Sts) -> None:
    t = sts.contoso
    r = await sts.password_token(t, client_id=t.app_client_id, scope=CA_SCOPE)
    assert error_of(await r.json()) == ("invalid_scope", 70011)


async def test_repeated_parameter_and_non_form_bodies_are_refused(sts: Sts) -> None:
    t = sts.contoso
    url = f"/{t.id}/oauth2/v2.0/token"
    twice = b"grant_type=password&grant_type=password&client_id=pta-agent"
    r = await sts.client.post(
        url, data=twice, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert error_of(await r.json()) == ("invalid_request", 90100)
    r = await sts.client.post(url, json={"grant_type": "password"})
    assert error_of(await r.json()) == ("invalid_request", 90100)
    r = await sts.client.post(url, data={"grant_type": "password", "pad": "x" * 70_000})
    assert r.status == 413
    assert (await r.json())["error"] == "invalid_request"


async def test_wrong_method_and_unknown_path_keep_the_error_shape(sts: Sts) -> None:
    r = await sts.client.get(f"/{sts.contoso.id}/oauth2/v2.0/token")
    assert r.status == 405 and "POST" in r.headers["Allow"]
    assert error_of(await r.json()) == ("invalid_request", 900561)
    r = await sts.client.get("/no/such/endpoint/at/all")
    assert r.status == 404 and (await r.json())["correlation_id"]


# --------------------------------------------------------------------------- logs


async def test_one_summary_line_per_request_and_no_secret_in_logs(sts: Sts) -> None:
    t = sts.contoso
    correlation = str(uuid.uuid4())
    with structlog.testing.capture_logs(processors=[merge_contextvars]) as events:
        bad = await sts.password_token(
            t, password="Wrong-" + t.admin_password, headers={"client-request-id": correlation}
        )
        good = await sts.password_token(t)
    assert bad.status == 400 and good.status == 200
    token = (await good.json())["access_token"]
    summaries = [e for e in events if e["event"] in ("token_issued", "token_refused")]
    assert [e["event"] for e in summaries] == ["token_refused", "token_issued"]
    refused, issued = summaries
    assert refused["correlation_id"] == correlation and refused["tenant_id"] == t.id
    assert refused["grant"] == "password" and refused["code"] == 50126
    assert refused["outcome"] == "invalid_grant" and refused["duration_ms"] >= 0
    assert issued["outcome"] == "success" and issued["username"] == t.admin_username
    assert issued["correlation_id"] != correlation
    dump = repr(events)
    assert t.admin_password not in dump
    assert token not in dump and token.split(".")[2] not in dump
