"""MSAL for Python, the reference client, through the browser sign-in over real HTTPS.

MSAL builds the authorize URL (PKCE S256, state, hashed nonce, form_post), the "browser"
(the test client) goes through the username and password pages, and MSAL redeems the
posted form's fields with `acquire_token_by_auth_code_flow`, then refreshes silently
twice (rotation: MSAL must keep the newest refresh token). The password check is a fake
validator, as in test_sts_authorize.
"""

from __future__ import annotations

import asyncio
import uuid
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msal
import pytest

from common import tls
from infra.stack import Stack
from sts.signin import PASSWORD_VALIDATOR
from tests.support.browser_signin import PASSWORD, FakeValidator, add_synced_user, form_of
from tests.support.sts_harness import make_tls, running_sts

pytestmark = pytest.mark.stack


@pytest.mark.usefixtures("msal_verifies_with_our_bundle")
async def test_msal_auth_code_flow_and_silent_refresh(stack: Stack, tmp_path: Path) -> None:
    ca, cert, key = make_tls(tmp_path)
    async with running_sts(
        stack,
        tmp_path,
        ssl_context=tls.server_context(cert, key),
        client_ssl=tls.client_context(ca),
    ) as sts:
        t = sts.contoso
        fake = FakeValidator()
        with warnings.catch_warnings():  # the app is started: aiohttp warns on changes
            warnings.simplefilter("ignore", DeprecationWarning)
            sts.app[PASSWORD_VALIDATOR] = fake
        alice = fake.add(t, "alice")
        await add_synced_user(sts, alice)
        scopes = [f"{t.app_client_id}/.default"]

        def new_app() -> msal.PublicClientApplication:
            return msal.PublicClientApplication(
                t.app_client_id,
                authority=f"{sts.settings.public_url}/{t.domain}",
                instance_discovery=False,
                verify=str(ca),
            )

        app = await asyncio.to_thread(new_app)
        flow: dict[str, Any] = await asyncio.to_thread(
            app.initiate_auth_code_flow,
            scopes,
            redirect_uri=t.app_redirect_uri,
            login_hint=alice.username,
            response_mode="form_post",  # RFC 9700 section 4.3.1; MSAL warns without it
        )
        auth = urlsplit(flow["auth_uri"])
        assert f"{auth.scheme}://{auth.netloc}" == sts.settings.public_url

        r = await sts.client.get(f"{auth.path}?{auth.query}", allow_redirects=False)
        page = await r.text()
        assert r.status == 200, page
        assert r.cookies["__Host-pta-csrf"]["secure"]
        action, fields = form_of(page)
        r = await sts.client.post(action, data={**fields, "username": alice.username})
        action, fields = form_of(await r.text())
        r = await sts.client.post(
            action, data={**fields, "password": PASSWORD}, allow_redirects=False
        )
        assert r.status == 200  # the form_post page, auto-submitted by a real browser
        action, auth_response = form_of(await r.text())
        assert action == t.app_redirect_uri and set(auth_response) == {"code", "state"}

        result = await asyncio.to_thread(app.acquire_token_by_auth_code_flow, flow, auth_response)
        assert "access_token" in result, result
        assert "refresh_token" in result
        assert result["id_token_claims"]["preferred_username"] == alice.username
        assert result["id_token_claims"]["oid"] == alice.id
        (account,) = await asyncio.to_thread(app.get_accounts)
        assert account["home_account_id"] == f"{alice.id}.{t.id}"

        seen = {result["refresh_token"]}
        for _ in range(2):  # each refresh rotates; MSAL keeps the newest
            silent = await asyncio.to_thread(
                app.acquire_token_silent_with_error, scopes, account, force_refresh=True
            )
            assert silent and "access_token" in silent, silent
            assert silent["refresh_token"] not in seen
            seen.add(silent["refresh_token"])
        assert str(uuid.UUID(account["local_account_id"])) == alice.id
