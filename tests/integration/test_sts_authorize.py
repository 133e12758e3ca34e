"""The browser sign-in (sts.authorize) and its grants (sts.codes) against a real PostgreSQL.

A test drives the pages like a browser: GET the authorize URL, read the form (action,
hidden fields, CSRF token; its twin is in the cookie jar), POST the username, POST the
password, and take the 302 without following it (the demo app's redirect URI,
`http://localhost:8400/callback`, has nobody listening). The password check is a fake
`PasswordValidator` plugged into the app (tests.support.browser_signin): the real one
needs agents, which these tests do not start; what the pages do with each of its answers
is what is tested here.
"""

from __future__ import annotations

import html
import re
import secrets
import uuid
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import jwt
import pytest
import pytest_asyncio
import structlog
from aiohttp import ClientResponse
from structlog.contextvars import merge_contextvars

from infra.demo import DemoTenant
from infra.stack import Stack
from sts import pkce
from sts.signin import PASSWORD_VALIDATOR, SignedInUser
from tests.support.browser_signin import PASSWORD, FakeValidator, add_synced_user, form_of
from tests.support.sts_harness import Sts, error_of, running_sts

pytestmark = pytest.mark.stack

WRONG = "Wrong-Battery-42"


@dataclass
class World:
    sts: Sts
    fake: FakeValidator
    alice: SignedInUser  # contoso, synced (in `users`)
    bob: SignedInUser  # fabrikam
    second_app: str  # another public app of contoso, same redirect URI


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    async with running_sts(stack, tmp_path_factory.mktemp("sts-authorize")) as sts:
        fake = FakeValidator()
        with warnings.catch_warnings():  # the app is started: aiohttp warns on changes
            warnings.simplefilter("ignore", DeprecationWarning)
            sts.app[PASSWORD_VALIDATOR] = fake
        alice = fake.add(sts.contoso, "alice")
        bob = fake.add(sts.fabrikam, "bob")
        await add_synced_user(sts, alice)
        await add_synced_user(sts, bob)
        second_app = str(uuid.uuid4())
        await sts.sql(
            "INSERT INTO apps (client_id, tenant_id, name, redirect_uris, is_public) "
            "VALUES ($1, $2, 'Second app', $3, true)",
            uuid.UUID(second_app),
            uuid.UUID(sts.contoso.id),
            [sts.contoso.app_redirect_uri],
        )
        yield World(sts, fake, alice, bob, second_app)


# --------------------------------------------------------------------------- the browser


@dataclass
class Flow:
    """One authorize request: its parameters and PKCE verifier."""

    tenant: DemoTenant
    params: dict[str, str]
    verifier: str

    @property
    def client_id(self) -> str:
        return self.params["client_id"]

    @property
    def redirect_uri(self) -> str:
        return self.params["redirect_uri"]


def new_flow(t: DemoTenant, client_id: str | None = None, **overrides: str | None) -> Flow:
    verifier = secrets.token_urlsafe(48)
    params: dict[str, str | None] = {
        "client_id": client_id or t.app_client_id,
        "redirect_uri": t.app_redirect_uri,
        "response_type": "code",
        "scope": "openid profile offline_access",
        "state": secrets.token_urlsafe(12),
        "nonce": secrets.token_urlsafe(12),
        "code_challenge": pkce.s256(verifier),
        "code_challenge_method": "S256",
        **overrides,
    }
    return Flow(t, {k: v for k, v in params.items() if v is not None}, verifier)


async def open_authorize(sts: Sts, flow: Flow) -> ClientResponse:
    return await sts.client.get(
        f"/{flow.tenant.domain}/oauth2/v2.0/authorize", params=flow.params, allow_redirects=False
    )


async def post(
    sts: Sts, action: str, data: dict[str, str], headers: dict[str, str] | None = None
) -> ClientResponse:
    return await sts.client.post(action, data=data, headers=headers, allow_redirects=False)


async def password_page(sts: Sts, flow: Flow, username: str) -> tuple[str, dict[str, str]]:
    r = await open_authorize(sts, flow)
    assert r.status == 200, await r.text()
    action, fields = form_of(await r.text())
    r = await post(sts, action, {**fields, "username": username})
    page = await r.text()
    assert r.status == 200, page
    assert 'type="password"' in page
    return form_of(page)


async def sign_in(
    sts: Sts,
    flow: Flow,
    username: str,
    password: str = PASSWORD,
    headers: dict[str, str] | None = None,
) -> ClientResponse:
    action, fields = await password_page(sts, flow, username)
    return await post(sts, action, {**fields, "password": password}, headers)


def redirect_params(r: ClientResponse, flow: Flow) -> dict[str, str]:
    """The query of a 302 to the flow's redirect_uri, one value per name."""
    assert r.status == 302, r.status
    location = r.headers["Location"]
    assert location.startswith(flow.redirect_uri + "?"), location
    query = parse_qs(urlsplit(location).query, keep_blank_values=True)
    assert all(len(v) == 1 for v in query.values())
    return {k: v[0] for k, v in query.items()}


async def code_for(sts: Sts, flow: Flow, username: str) -> str:
    params = redirect_params(await sign_in(sts, flow, username), flow)
    assert params["state"] == flow.params["state"]
    return params["code"]


async def redeem(sts: Sts, flow: Flow, code: str, **overrides: str) -> ClientResponse:
    form = {
        "grant_type": "authorization_code",
        "client_id": flow.client_id,
        "code": code,
        "redirect_uri": flow.redirect_uri,
        "code_verifier": flow.verifier,
        **overrides,
    }
    return await sts.token(flow.tenant.id, **form)


async def refresh(sts: Sts, t: DemoTenant, token: str, **overrides: str) -> ClientResponse:
    form = {
        "grant_type": "refresh_token",
        "client_id": t.app_client_id,
        "refresh_token": token,
        **overrides,
    }
    return await sts.token(t.id, **form)


async def jwks_key(sts: Sts, tenant: str, token: str) -> Any:
    kid = jwt.get_unverified_header(token)["kid"]
    r = await sts.client.get(f"/{tenant}/discovery/v2.0/keys")
    keys = {k["kid"]: k for k in (await r.json())["keys"]}
    return jwt.PyJWK(keys[kid]).key


async def expect_error(r: ClientResponse) -> tuple[int, tuple[str, int | None]]:
    return r.status, error_of(await r.json())


# --------------------------------------------------------------------------- the happy path


async def test_full_flow_issues_verified_tokens(world: World) -> None:
    sts, t, alice = world.sts, world.sts.contoso, world.alice
    flow = new_flow(t, login_hint=alice.username)
    r = await open_authorize(sts, flow)
    assert r.status == 200
    assert r.headers["Cache-Control"] == "no-store" and r.headers["X-Frame-Options"] == "DENY"
    csp = r.headers["Content-Security-Policy"]
    assert "form-action 'self' http://localhost:8400;" in csp and "script-src" not in csp
    assert r.cookies["pta-csrf"]["httponly"] and r.cookies["pta-csrf"]["samesite"] == "Strict"
    page = await r.text()
    assert '<label for="username">' in page and f'value="{alice.username}"' in page
    action, fields = form_of(page)
    assert action == f"/{t.id}/oauth2/v2.0/authorize"
    assert fields["csrf_token"] == r.cookies["pta-csrf"].value and fields["step"] == "username"
    assert fields["state"] == flow.params["state"] and "login_hint" not in fields

    r = await post(sts, action, {**fields, "username": alice.username})
    page = await r.text()
    assert r.status == 200 and alice.username in page and "Sign in</button>" in page
    assert '<label for="password">' in page
    action, fields = form_of(page)
    assert fields["step"] == "password" and fields["username"] == alice.username

    correlation = str(uuid.uuid4())
    origin = {"Origin": sts.settings.public_url, "client-request-id": correlation}
    with structlog.testing.capture_logs(processors=[merge_contextvars]) as events:
        r = await post(sts, action, {**fields, "password": PASSWORD}, origin)
    params = redirect_params(r, flow)
    assert set(params) == {"code", "state"} and params["state"] == flow.params["state"]
    assert r.headers["Cache-Control"] == "no-store"
    username, context = world.fake.calls[-1]
    assert username == alice.username
    assert (context.flow, context.client_id) == ("authorize", t.app_client_id)
    assert context.correlation_id == correlation and context.client_ip == "127.0.0.1"
    issued = [e for e in events if e["event"] == "authorization_code_issued"]
    assert issued and issued[0]["correlation_id"] == correlation
    assert PASSWORD not in repr(events) and params["code"] not in repr(events)

    r = await redeem(sts, flow, params["code"], client_info="1")
    body = await r.json()
    assert r.status == 200, body
    assert r.headers["Cache-Control"] == "no-store"
    assert body["token_type"] == "Bearer" and body["scope"] == "openid profile offline_access"
    assert len(body["refresh_token"]) == 43 and "client_info" in body
    id_token = body["id_token"]
    claims = jwt.decode(
        id_token,
        await jwks_key(sts, t.id, id_token),
        algorithms=["ES256"],
        audience=t.app_client_id,
        issuer=f"{sts.settings.public_url}/{t.id}/v2.0",
    )
    assert claims["nonce"] == flow.params["nonce"]
    assert claims["sub"] == claims["oid"] == alice.id and claims["tid"] == t.id
    assert claims["preferred_username"] == alice.username and claims["name"] == alice.display_name
    assert claims["iat"] - 5 <= claims["auth_time"] <= claims["iat"]
    access = jwt.decode(
        body["access_token"],
        await jwks_key(sts, t.id, body["access_token"]),
        algorithms=["ES256"],
        audience=t.app_client_id,
    )
    assert access["oid"] == alice.id and access["roles"] == [] and access["azp"] == t.app_client_id


async def test_form_post_response_mode(world: World) -> None:
    sts, t = world.sts, world.sts.contoso
    flow = new_flow(t, response_mode="form_post", scope="openid")
    r = await sign_in(sts, flow, world.alice.username)
    page = await r.text()
    assert r.status == 200, page
    action, fields = form_of(page)
    assert action == flow.redirect_uri and set(fields) == {"code", "state"}
    assert fields["state"] == flow.params["state"]
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'sha256-" in csp and "form-action 'self' http://localhost:8400" in csp
    assert "<noscript>" in page
    body = await (await redeem(sts, flow, fields["code"])).json()
    assert "id_token" in body and "refresh_token" not in body  # no offline_access asked


async def test_the_apps_own_scope_makes_its_audience(world: World) -> None:
    sts, t = world.sts, world.sts.contoso
    flow = new_flow(t, scope=f"{t.app_client_id}/.default openid")
    body = await (await redeem(sts, flow, await code_for(sts, flow, world.alice.username))).json()
    assert body["scope"] == f"{t.app_client_id}/.default openid"
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["aud"] == t.app_client_id


async def test_discovery_advertises_the_code_flow(world: World) -> None:
    r = await world.sts.client.get(f"/{world.sts.contoso.id}/v2.0/.well-known/openid-configuration")
    doc = await r.json()
    assert {"authorization_code", "refresh_token"} <= set(doc["grant_types_supported"])
    assert doc["code_challenge_methods_supported"] == ["S256"]


# --------------------------------------------------------------------------- codes


async def test_pkce_mismatch_is_invalid_grant_and_burns_the_code(world: World) -> None:
    sts, t = world.sts, world.sts.contoso
    flow = new_flow(t)
    code = await code_for(sts, flow, world.alice.username)
    other = secrets.token_urlsafe(48)
    assert await expect_error(await redeem(sts, flow, code, code_verifier=other)) == (
        400,
        ("invalid_grant", 501481),
    )
    assert await expect_error(await redeem(sts, flow, code)) == (400, ("invalid_grant", 54005))


async def test_malformed_or_missing_verifier_does_not_consume_the_code(world: World) -> None:
    sts, t = world.sts, world.sts.contoso
    flow = new_flow(t)
    code = await code_for(sts, flow, world.alice.username)
    r = await redeem(sts, flow, code, code_verifier="short")
    assert await expect_error(r) == (400, ("invalid_request", 90100))
    form = {"grant_type": "authorization_code", "client_id": t.app_client_id, "code": code,
            "redirect_uri": flow.redirect_uri}  # fmt: skip
    r = await sts.token(t.id, **form)
    assert await expect_error(r) == (400, ("invalid_request", 900144))
    assert (await redeem(sts, flow, code)).status == 200


async def test_reused_code_is_refused_and_revokes_its_refresh_tokens(world: World) -> None:
    sts, t = world.sts, world.sts.contoso
    flow = new_flow(t)
    code = await code_for(sts, flow, world.alice.username)
    first = await redeem(sts, flow, code)
    assert first.status == 200
    refresh_token = (await first.json())["refresh_token"]
    with structlog.testing.capture_logs() as events:
        assert await expect_error(await redeem(sts, flow, code)) == (
            400,
            ("invalid_grant", 54005),
        )
    assert [e["revoked_families"] for e in events if e["event"] == "authorization_code_replayed"]
    assert await expect_error(await refresh(sts, t, refresh_token)) == (
        400,
        ("invalid_grant", 50173),
    )


async def test_expired_code(world: World) -> None:
    sts, t = world.sts, world.sts.contoso
    flow = new_flow(t)
    code = await code_for(sts, flow, world.alice.username)
    await sts.sql(
        "UPDATE authorization_codes SET expires_at = now() - interval '1 second' "
        "WHERE code_hash = encode(sha256(convert_to($1, 'UTF8')), 'hex')",
        code,
    )
    assert await expect_error(await redeem(sts, flow, code)) == (400, ("invalid_grant", 70008))


async def test_code_for_another_client_tenant_or_redirect_uri(world: World) -> None:
    sts, t = world.sts, world.sts.contoso
    flow = new_flow(t)
    code = await code_for(sts, flow, world.alice.username)
    r = await redeem(sts, flow, code, client_id=world.second_app)
    status, (error, errcode) = await expect_error(r)
    assert (status, error, errcode) == (400, "invalid_grant", 70000)
    assert "another client" in (await r.json())["error_description"]
    assert (await redeem(sts, flow, code)).status == 400  # burnt by the first attempt

    flow = new_flow(t)
    code = await code_for(sts, flow, world.alice.username)
    other_tenant = Flow(sts.fabrikam, {**flow.params, "client_id": sts.fabrikam.app_client_id},
                        flow.verifier)  # fmt: skip
    assert await expect_error(await redeem(sts, other_tenant, code)) == (
        400,
        ("invalid_grant", 70000),
    )
    r = await redeem(sts, flow, code, redirect_uri=flow.redirect_uri + "/")
    assert await expect_error(r) == (400, ("invalid_grant", 70000))
    assert await expect_error(await redeem(sts, flow, "x" * 43)) == (
        400,
        ("invalid_grant", 70000),
    )


async def test_codes_and_tokens_are_stored_hashed(world: World) -> None:
    sts, t = world.sts, world.sts.contoso
    flow = new_flow(t)
    code = await code_for(sts, flow, world.alice.username)
    body = await (await redeem(sts, flow, code)).json()
    conn = await asyncpg.connect(sts.dsn)
    try:
        codes = await conn.fetch("SELECT * FROM authorization_codes")
        tokens = await conn.fetch("SELECT * FROM refresh_tokens")
    finally:
        await conn.close()
    dump = repr([dict(r) for r in codes]) + repr([dict(r) for r in tokens])
    assert code not in dump and body["refresh_token"] not in dump
    assert pkce.s256(flow.verifier) in dump  # the challenge is kept, to check the verifier
    assert {len(r["code_hash"]) for r in codes} == {len(r["token_hash"]) for r in tokens} == {64}


# --------------------------------------------------------------------------- refresh tokens


async def test_refresh_token_rotation_and_reuse_detection(world: World) -> None:
    sts, t = world.sts, world.sts.contoso
    flow = new_flow(t)
    first = await (await redeem(sts, flow, await code_for(sts, flow, world.alice.username))).json()
    rt1 = first["refresh_token"]

    r = await refresh(sts, t, rt1, scope="openid offline_access")
    second = await r.json()
    assert r.status == 200, second
    rt2 = second["refresh_token"]
    assert rt2 != rt1 and second["scope"] == "openid offline_access"
    claims = jwt.decode(second["id_token"], options={"verify_signature": False})
    assert "nonce" not in claims and claims["oid"] == world.alice.id
    first_claims = jwt.decode(first["id_token"], options={"verify_signature": False})
    assert claims["auth_time"] == first_claims["auth_time"]  # the original sign-in

    r = await refresh(sts, t, rt2)
    rt3 = (await r.json())["refresh_token"]
    assert r.status == 200

    # rt1 was rotated: presenting it again revokes the whole family (rt3 included).
    with structlog.testing.capture_logs() as events:
        assert await expect_error(await refresh(sts, t, rt1)) == (400, ("invalid_grant", 50173))
    assert any(e["event"] == "refresh_token_reused" for e in events)
    assert await expect_error(await refresh(sts, t, rt3)) == (400, ("invalid_grant", 50173))


async def test_refresh_token_is_bound_to_client_and_tenant(world: World) -> None:
    sts, t = world.sts, world.sts.contoso
    flow = new_flow(t)
    body = await (await redeem(sts, flow, await code_for(sts, flow, world.alice.username))).json()
    token = body["refresh_token"]
    r = await refresh(sts, t, token, client_id=world.second_app)
    assert await expect_error(r) == (400, ("invalid_grant", 70000))
    r = await refresh(sts, sts.fabrikam, token)
    assert await expect_error(r) == (400, ("invalid_grant", 70000))
    r = await refresh(sts, t, token, scope="openid email")  # email was not granted
    assert await expect_error(r) == (400, ("invalid_scope", 70011))
    assert (await refresh(sts, t, token)).status == 400  # used by the refused widening
    assert await expect_error(await refresh(sts, t, "y" * 43)) == (400, ("invalid_grant", 70000))


async def test_expired_refresh_token(world: World) -> None:
    sts, t = world.sts, world.sts.contoso
    flow = new_flow(t)
    body = await (await redeem(sts, flow, await code_for(sts, flow, world.alice.username))).json()
    await sts.sql(
        "UPDATE refresh_tokens SET expires_at = now() - interval '1 second' "
        "WHERE token_hash = encode(sha256(convert_to($1, 'UTF8')), 'hex')",
        body["refresh_token"],
    )
    r = await refresh(sts, t, body["refresh_token"])
    assert await expect_error(r) == (400, ("invalid_grant", 700082))


async def test_a_user_removed_from_sync_cannot_refresh(world: World) -> None:
    sts, t = world.sts, world.sts.contoso
    carol = world.fake.add(t, "carol")
    await add_synced_user(sts, carol)
    flow = new_flow(t)
    body = await (await redeem(sts, flow, await code_for(sts, flow, carol.username))).json()
    await sts.sql("DELETE FROM users WHERE id = $1", uuid.UUID(carol.id))
    r = await refresh(sts, t, body["refresh_token"])
    assert await expect_error(r) == (400, ("invalid_grant", 50173))


# --------------------------------------------------------------------------- edge validation


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "https://evil.test/callback",
        "http://localhost:8400/callback/",
        "http://localhost:8400/callback?x=1",
        "http://localhost:8400/Callback",
        "http://LOCALHOST:8400/callback",
        "http://localhost:8400/callback#frag",
        None,
    ],
)
async def test_unregistered_redirect_uri_is_an_error_page(
    world: World, redirect_uri: str | None
) -> None:
    flow = new_flow(world.sts.contoso, redirect_uri=redirect_uri, code_challenge=None)
    r = await open_authorize(world.sts, flow)
    page = await r.text()
    assert r.status == 400 and r.content_type == "text/html"
    assert "Location" not in r.headers
    assert ("AADSTS50011" if redirect_uri else "AADSTS900144") in page
    assert "Correlation ID" in page


@pytest.mark.parametrize("which", ["random", "other_tenant", "agent", "missing"])
async def test_unknown_client_id_is_an_error_page(world: World, which: str) -> None:
    t = world.sts.contoso
    client_id = {
        "random": str(uuid.uuid4()),
        "other_tenant": world.sts.fabrikam.app_client_id,  # tenant isolation
        "agent": "pta-agent",  # a client without redirect URIs
        "missing": "",
    }[which]
    flow = new_flow(t)
    flow.params["client_id"] = client_id
    r = await open_authorize(world.sts, flow)
    page = await r.text()
    assert r.status == 400 and "Location" not in r.headers and r.content_type == "text/html"
    expected = {"random": "700016", "other_tenant": "700016", "agent": "50011"}
    assert f"AADSTS{expected.get(which, '900144')}" in page


@pytest.mark.parametrize(
    ("overrides", "error", "code"),
    [
        ({"code_challenge": None}, "invalid_request", 9002325),
        ({"code_challenge": None, "code_challenge_method": None}, "invalid_request", 9002325),
        ({"code_challenge_method": "plain"}, "invalid_request", 90100),
        ({"code_challenge_method": None}, "invalid_request", 90100),  # defaults to plain
        ({"code_challenge": "tooShort"}, "invalid_request", 501491),
        ({"response_type": "token"}, "unsupported_response_type", 70005),
        ({"response_type": "code id_token"}, "unsupported_response_type", 70005),
        ({"response_type": None}, "invalid_request", 900144),
        ({"scope": None}, "invalid_request", 900144),
        ({"scope": "openid https://graph.microsoft.com/.default"}, "invalid_scope", 70011),
        ({"scope": "openid urn:pta:ca/.default"}, "invalid_scope", 70011),
        ({"response_mode": "fragment"}, "invalid_request", 90100),
        ({"prompt": "none"}, "login_required", 50058),
        ({"prompt": "bogus"}, "invalid_request", 90100),
    ],
)
async def test_protocol_errors_go_back_to_the_redirect_uri(
    world: World, overrides: dict[str, str | None], error: str, code: int
) -> None:
    flow = new_flow(world.sts.contoso, **overrides)
    r = await open_authorize(world.sts, flow)
    params = redirect_params(r, flow)
    assert params["error"] == error
    assert params["error_description"].startswith(f"AADSTS{code}: ")
    assert "Correlation ID: " in params["error_description"]
    assert params["state"] == flow.params["state"]
    assert "code" not in params


async def test_errors_without_state_and_with_form_post(world: World) -> None:
    flow = new_flow(world.sts.contoso, state=None, code_challenge=None)
    params = redirect_params(await open_authorize(world.sts, flow), flow)
    assert "state" not in params and params["error"] == "invalid_request"
    flow = new_flow(world.sts.contoso, response_mode="form_post", code_challenge=None)
    r = await open_authorize(world.sts, flow)
    action, fields = form_of(await r.text())
    assert r.status == 200 and action == flow.redirect_uri
    assert fields["error"] == "invalid_request" and fields["state"] == flow.params["state"]


async def test_repeated_or_oversized_parameters_are_an_error_page(world: World) -> None:
    sts, t = world.sts, world.sts.contoso
    flow = new_flow(t)
    query = "&".join(f"{k}={v}" for k, v in flow.params.items()) + "&state=again"
    r = await sts.client.get(f"/{t.domain}/oauth2/v2.0/authorize?{query}", allow_redirects=False)
    assert r.status == 400 and "Location" not in r.headers and "AADSTS90100" in await r.text()
    flow = new_flow(t, state="s" * 5000)
    r = await open_authorize(sts, flow)
    assert r.status == 400 and "Location" not in r.headers
    r = await sts.client.get("/nosuch.test/oauth2/v2.0/authorize", params=new_flow(t).params)
    assert r.status == 400 and "AADSTS90002" in await r.text()


# --------------------------------------------------------------------------- the forms


async def test_post_without_csrf_token_or_from_another_origin_is_refused(world: World) -> None:
    sts, t = world.sts, world.sts.contoso
    flow = new_flow(t)
    r = await open_authorize(sts, flow)
    action, fields = form_of(await r.text())
    without = {k: v for k, v in fields.items() if k != "csrf_token"}
    for data, headers in [
        ({**without, "username": world.alice.username}, None),
        ({**fields, "csrf_token": "A" * 43, "username": world.alice.username}, None),
        ({**fields, "username": world.alice.username}, {"Origin": "https://evil.test"}),
        ({**fields, "username": world.alice.username}, {"Origin": "null"}),
    ]:
        r = await post(sts, action, data, headers)
        page = await r.text()
        assert r.status == 400 and "AADSTS90100" in page, page
        assert 'type="password"' not in page and "Location" not in r.headers
    # A fresh browser (no cookie) with a token copied from someone's page is refused too.
    sts.client.session.cookie_jar.clear()
    r = await post(sts, action, {**fields, "username": world.alice.username})
    assert r.status == 400 and "AADSTS90100" in await r.text()


async def test_wrong_password_shows_the_code_and_correlation_id_not_the_password(
    world: World,
) -> None:
    sts, t = world.sts, world.sts.contoso
    flow = new_flow(t)
    correlation = str(uuid.uuid4())
    with structlog.testing.capture_logs(processors=[merge_contextvars]) as events:
        r = await sign_in(
            sts, flow, world.alice.username, WRONG, {"client-request-id": correlation}
        )
    page = await r.text()
    assert r.status == 400 and "Location" not in r.headers
    assert "AADSTS50126: Your account or password is incorrect." in page
    assert f"Correlation ID: {correlation}" in page
    assert WRONG not in page and PASSWORD not in page
    (password_input,) = re.findall(r'<input type="password"[^>]*>', page)
    assert "value=" not in password_input
    assert WRONG not in repr(events)
    # The form is ready for another try, and the right password then works.
    action, fields = form_of(page)
    r = await post(sts, action, {**fields, "password": PASSWORD})
    assert "code" in redirect_params(r, flow)


@pytest.mark.parametrize(
    ("uid", "code", "words"),
    [
        ("maya", "AADSTS50055", "You must change your password"),
        ("luke", "AADSTS50053", "Your account is locked"),
        ("ghost", "AADSTS50034", "couldn't find an account"),
        ("owl", "AADSTS50053", "can't sign in at this time"),
    ],
)
async def test_other_refusals_show_words_for_people(
    world: World, uid: str, code: str, words: str
) -> None:
    t = world.sts.contoso
    r = await sign_in(world.sts, new_flow(t), f"{uid}@{t.domain}", "Any-Password-1")
    page = html.unescape(await r.text())
    assert r.status == 400 and f"{code}: " in page and words in page
    assert "Any-Password-1" not in page


async def test_agents_unavailable_is_the_error_page(world: World) -> None:
    t = world.sts.contoso
    correlation = str(uuid.uuid4())
    r = await sign_in(
        world.sts, new_flow(t), f"down@{t.domain}", PASSWORD, {"client-request-id": correlation}
    )
    page = await r.text()
    assert r.status == 503 and r.content_type == "text/html" and "Location" not in r.headers
    assert "AADSTS80001" in page and correlation in page and PASSWORD not in page


async def test_home_realm_the_domain_must_be_this_tenants(world: World) -> None:
    sts, t = world.sts, world.sts.contoso
    calls = len(world.fake.calls)
    for username in (world.bob.username, "alice@nosuch.test", f"alice@{t.id}", "alice", "@x"):
        r = await open_authorize(sts, new_flow(t))
        action, fields = form_of(await r.text())
        r = await post(sts, action, {**fields, "username": username})
        page = await r.text()
        assert r.status == 400 and 'type="password"' not in page, username
        assert "AADSTS50034" in page or "name@domain" in page
        # The password step checks again: a hand-made POST gets no further.
        r = await post(
            sts, action, {**fields, "step": "password", "username": username, "password": "x"}
        )
        assert r.status == 400 and 'type="password"' not in await r.text()
    assert len(world.fake.calls) == calls  # no password was ever sent to be checked


async def test_empty_password_is_refused_before_any_check(world: World) -> None:
    sts, t = world.sts, world.sts.contoso
    calls = len(world.fake.calls)
    action, fields = await password_page(sts, new_flow(t), world.alice.username)
    r = await post(sts, action, {**fields, "password": ""})
    assert r.status == 400 and "Enter your password." in await r.text()
    assert len(world.fake.calls) == calls


async def test_hidden_fields_are_validated_again_on_every_post(world: World) -> None:
    sts, t = world.sts, world.sts.contoso
    flow = new_flow(t)
    action, fields = await password_page(sts, flow, world.alice.username)
    calls = len(world.fake.calls)
    tampered = {**fields, "password": PASSWORD, "redirect_uri": "https://evil.test/cb"}
    r = await post(sts, action, tampered)
    assert r.status == 400 and "Location" not in r.headers and "AADSTS50011" in await r.text()
    no_pkce = {k: v for k, v in fields.items() if k != "code_challenge"}
    params = redirect_params(await post(sts, action, {**no_pkce, "password": PASSWORD}), flow)
    assert params["error"] == "invalid_request" and "code" not in params
    r = await post(
        sts, action, {**fields, "password": PASSWORD, "client_id": world.sts.fabrikam.app_client_id}
    )
    assert r.status == 400 and "AADSTS700016" in await r.text()
    r = await post(sts, action, {**fields, "password": PASSWORD, "step": "other"})
    assert r.status == 400 and "AADSTS90100" in await r.text()
    assert len(world.fake.calls) == calls


async def test_xss_in_the_username_and_state_is_escaped(world: World) -> None:
    sts, t = world.sts, world.sts.contoso
    hostile = f'"><script>alert(1)</script>@{t.domain}'
    flow = new_flow(t, state='"><script>alert(2)</script>')
    r = await open_authorize(sts, flow)
    page = await r.text()
    assert "<script>" not in page and "&lt;script&gt;alert(2)" in page
    action, fields = form_of(page)
    r = await post(sts, action, {**fields, "username": hostile})
    page = await r.text()
    assert "<script>" not in page
    assert "&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;@" in page
    action, fields = form_of(page)
    assert fields["username"] == hostile  # escaped in HTML, intact as data
    r = await post(sts, action, {**fields, "password": WRONG})
    page = await r.text()
    assert r.status == 400 and "<script>" not in page and "AADSTS50126" in page
