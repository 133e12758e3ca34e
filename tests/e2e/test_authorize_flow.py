"""The browser flow through the whole stack: authorize pages, an agent validates the
password against slapd, authorization code with PKCE S256, tokens, refresh.

Driven by an HTTP client the way a browser without JavaScript would: read the form and
its hidden fields, keep the CSRF cookie, post, follow nothing after the final 302.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
import secrets
from urllib.parse import parse_qs, urlsplit

import aiohttp
import jwt
import pytest

from infra.stack import Stack
from tests.e2e.support import client_ssl, stack_doc, tenant_doc, user_password

pytestmark = pytest.mark.stack

_FORM = re.compile(r'<form[^>]*action="([^"]*)"')
_HIDDEN = re.compile(r'<input type="hidden" name="([^"]*)" value="([^"]*)">')


def _form(page: str) -> tuple[str, dict[str, str]]:
    match = _FORM.search(page)
    assert match, page
    fields = {html.unescape(k): html.unescape(v) for k, v in _HIDDEN.findall(page)}
    return html.unescape(match.group(1)), fields


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


async def _sign_in_page_flow(
    stack: Stack, username: str, password: str
) -> tuple[aiohttp.ClientResponse, dict[str, str], str, str]:
    doc = stack_doc(stack)
    tenant = tenant_doc(stack, username.split("@")[1])
    verifier = secrets.token_urlsafe(48)
    params = {
        "client_id": tenant["app"]["client_id"],
        "redirect_uri": tenant["app"]["redirect_uri"],
        "response_type": "code",
        "scope": "openid profile offline_access",
        "state": secrets.token_urlsafe(12),
        "nonce": secrets.token_urlsafe(12),
        "code_challenge": _s256(verifier),
        "code_challenge_method": "S256",
    }
    ssl = client_ssl(stack)
    base = doc["sts_url"]
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        url = f"{base}/{tenant['domain']}/oauth2/v2.0/authorize"
        async with http.get(url, params=params, ssl=ssl) as r:
            assert r.status == 200, await r.text()
            action, fields = _form(await r.text())
        async with http.post(
            base + action if action.startswith("/") else action,
            data={**fields, "username": username},
            ssl=ssl,
        ) as r:
            page = await r.text()
            assert r.status == 200 and 'type="password"' in page, page
            action, fields = _form(page)
        r = await http.post(
            base + action if action.startswith("/") else action,
            data={**fields, "password": password},
            ssl=ssl,
            allow_redirects=False,
        )
        body = await r.text()
        r.release()
    return r, params, verifier, body


async def test_code_flow_with_pkce_through_real_agents(stack: Stack) -> None:
    doc = stack_doc(stack)
    tenant = tenant_doc(stack, "contoso.test")
    r, params, verifier, _ = await _sign_in_page_flow(
        stack, "alice@contoso.test", user_password(stack, "alice@contoso.test")
    )
    assert r.status == 302, r.status
    location = r.headers["Location"]
    assert location.startswith(params["redirect_uri"] + "?")
    query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    assert query["state"] == params["state"]
    token_url = f"{doc['sts_url']}/{tenant['id']}/oauth2/v2.0/token"
    form = {
        "grant_type": "authorization_code",
        "client_id": params["client_id"],
        "code": query["code"],
        "redirect_uri": params["redirect_uri"],
        "code_verifier": verifier,
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(token_url, data=form, ssl=client_ssl(stack)) as t:
            tokens = await t.json()
            assert t.status == 200, tokens
        claims = jwt.decode(tokens["id_token"], options={"verify_signature": False})
        assert claims["nonce"] == params["nonce"]
        assert claims["preferred_username"] == "alice@contoso.test"
        assert "refresh_token" in tokens
        refresh = {
            "grant_type": "refresh_token",
            "client_id": params["client_id"],
            "refresh_token": tokens["refresh_token"],
        }
        async with http.post(token_url, data=refresh, ssl=client_ssl(stack)) as rt:
            rotated = await rt.json()
            assert rt.status == 200, rotated
        # The code is single use; a second use also revokes what the first one issued.
        async with http.post(token_url, data=form, ssl=client_ssl(stack)) as again:
            assert again.status == 400
            assert (await again.json())["error"] == "invalid_grant"
        refresh["refresh_token"] = rotated["refresh_token"]
        async with http.post(token_url, data=refresh, ssl=client_ssl(stack)) as revoked:
            assert revoked.status == 400, await revoked.text()


async def test_pkce_verifier_mismatch_is_refused(stack: Stack) -> None:
    doc = stack_doc(stack)
    tenant = tenant_doc(stack, "contoso.test")
    r, params, _verifier, _ = await _sign_in_page_flow(
        stack, "bob@contoso.test", user_password(stack, "bob@contoso.test")
    )
    query = {k: v[0] for k, v in parse_qs(urlsplit(r.headers["Location"]).query).items()}
    form = {
        "grant_type": "authorization_code",
        "client_id": params["client_id"],
        "code": query["code"],
        "redirect_uri": params["redirect_uri"],
        "code_verifier": secrets.token_urlsafe(48),
    }
    async with aiohttp.ClientSession() as http:
        url = f"{doc['sts_url']}/{tenant['id']}/oauth2/v2.0/token"
        async with http.post(url, data=form, ssl=client_ssl(stack)) as t:
            body = await t.json()
    assert t.status == 400 and body["error"] == "invalid_grant", body


async def test_expired_password_shows_its_code_on_the_page(stack: Stack) -> None:
    r, _params, _verifier, body = await _sign_in_page_flow(
        stack, "erin@contoso.test", user_password(stack, "erin@contoso.test")
    )
    assert r.status == 400  # the password page again, with the reason
    assert "AADSTS50144" in body
    assert user_password(stack, "erin@contoso.test") not in body
