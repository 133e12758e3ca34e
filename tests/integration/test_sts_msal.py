"""MSAL for Python, the reference client (docs/design.md), against the STS over real HTTPS.

MSAL reads the discovery document, starts a device flow and redeems it; the person's
approval goes through the HTML form. MSAL's password grant is not used: it first asks
`https://{host}/common/userrealm/...` on port 443 (the host without our port), which
home-realm discovery will answer once it exists.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import jwt
import msal
import pytest

from common import tls
from infra.stack import Stack
from tests.support.sts_harness import AGENT, CA_SCOPE, make_tls, running_sts

pytestmark = pytest.mark.stack


@pytest.mark.usefixtures("msal_verifies_with_our_bundle")
async def test_msal_device_flow_over_https(stack: Stack, tmp_path: Path) -> None:
    ca, cert, key = make_tls(tmp_path)
    async with running_sts(
        stack,
        tmp_path,
        ssl_context=tls.server_context(cert, key),
        client_ssl=tls.client_context(ca),
        device_poll_interval_s=1,
    ) as sts:
        t = sts.contoso
        authority = f"{sts.settings.public_url}/{t.domain}"

        def new_app() -> msal.PublicClientApplication:
            return msal.PublicClientApplication(
                AGENT, authority=authority, instance_discovery=False, verify=str(ca)
            )

        app = await asyncio.to_thread(new_app)
        flow: dict[str, Any] = await asyncio.to_thread(app.initiate_device_flow, [CA_SCOPE])
        assert "user_code" in flow, flow

        form = await sts.client.get("/devicelogin")
        cookie = form.cookies["__Host-pta-csrf"]
        assert cookie["secure"] and cookie["httponly"] and cookie["samesite"] == "Strict"
        assert cookie["path"] == "/" and not cookie["domain"]
        page = await form.text()
        match = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert match
        r = await sts.client.post(
            "/devicelogin",
            data={
                "csrf_token": match.group(1),
                "user_code": flow["user_code"],
                "username": t.admin_username,
                "password": t.admin_password,
                "action": "approve",
            },
        )
        assert r.status == 200, await r.text()

        result = await asyncio.to_thread(app.acquire_token_by_device_flow, flow)
        assert "access_token" in result, result
        claims = jwt.decode(result["access_token"], options={"verify_signature": False})
        assert claims["aud"] == "urn:pta:ca" and claims["tid"] == t.id
        assert result["id_token_claims"]["preferred_username"] == t.admin_username
        accounts = await asyncio.to_thread(app.get_accounts)
        assert [a["username"] for a in accounts] == [t.admin_username]
        assert accounts[0]["home_account_id"] == f"{claims['oid']}.{t.id}"
