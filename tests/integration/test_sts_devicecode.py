"""The device authorization grant (RFC 8628) end to end: device, browser form, polling.

The browser side is driven like a person would: GET the form, read the CSRF token from
the hidden field (its twin is in the cookie jar), POST the code and credentials.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator

import jwt
import pytest
import pytest_asyncio

from infra.stack import Stack
from tests.support.devicecode import csrf_token, login, poll, start_flow, submit
from tests.support.sts_harness import (
    AGENT,
    CA_SCOPE,
    DEVICE_GRANT,
    Sts,
    error_of,
    running_sts,
)

pytestmark = pytest.mark.stack


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def sts(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Sts]:
    async with running_sts(stack, tmp_path_factory.mktemp("sts-device")) as running:
        yield running


async def test_full_flow_pending_approve_redeem_once(sts: Sts) -> None:
    t = sts.contoso
    flow = await start_flow(sts, t)
    assert re.fullmatch(r"[BCDFGHJKLMNPQRSTVWXZ]{8}", flow["user_code"])
    assert flow["verification_uri"] == f"{sts.settings.public_url}/devicelogin"
    assert flow["expires_in"] == 900 and flow["interval"] == 5
    assert flow["user_code"] in flow["message"] and len(flow["device_code"]) >= 43

    status, body = await poll(sts, t, flow)
    assert (status, error_of(body)) == (400, ("authorization_pending", 70016))
    status, body = await poll(sts, t, flow)  # at once again: faster than the interval
    assert error_of(body) == ("slow_down", 70016)

    # Without the CSRF token the form is refused with an HTML error page.
    status, page = await submit(sts, login(t, flow), with_csrf=False)
    assert status == 400 and "AADSTS90100" in page and "Correlation ID" in page
    # A wrong password shows the form again, code and username kept, password not echoed.
    wrong = "Not-the-password-42"
    status, page = await submit(sts, login(t, flow, password=wrong))
    assert status == 400 and "AADSTS50126" in page
    assert wrong not in page and t.admin_password not in page
    assert f'value="{flow["user_code"]}"' in page
    _, body = await poll(sts, t, flow)
    assert error_of(body)[0] in ("authorization_pending", "slow_down")

    # Lower case with a hyphen is the same code (RFC 8628 section 6.1).
    typed = flow["user_code"][:4].lower() + "-" + flow["user_code"][4:].lower()
    status, page = await submit(sts, login(t, flow, user_code=typed))
    assert status == 200, page
    assert t.admin_username in page and t.admin_password not in page

    status, body = await poll(sts, t, flow)
    assert status == 200, body
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["aud"] == "urn:pta:ca" and claims["tid"] == t.id
    assert claims["roles"] == ["hybrid_identity_admin"]
    assert claims["preferred_username"] == t.admin_username
    assert "id_token" in body
    status, body = await poll(sts, t, flow)  # single use
    assert (status, error_of(body)) == (400, ("invalid_grant", 70000))


async def test_expired_code_is_reported_once_then_unknown(sts: Sts) -> None:
    t = sts.fabrikam
    flow = await start_flow(sts, t)
    await sts.sql(
        "UPDATE device_codes SET expires_at = now() - interval '1 second' WHERE user_code = $1",
        flow["user_code"],
    )
    status, page = await submit(sts, login(t, flow))
    assert status == 400 and "not recognised" in page
    _, body = await poll(sts, t, flow)
    assert error_of(body) == ("expired_token", 70019)
    _, body = await poll(sts, t, flow)
    assert error_of(body) == ("invalid_grant", 70000)


async def test_declined_code_is_access_denied(sts: Sts) -> None:
    t = sts.contoso
    flow = await start_flow(sts, t)
    status, page = await submit(sts, login(t, flow, action="deny"))
    assert status == 200 and "denied" in page
    _, body = await poll(sts, t, flow)
    assert error_of(body) == ("access_denied", 65004)


async def test_admin_of_another_tenant_cannot_approve(sts: Sts) -> None:
    contoso, fabrikam = sts.contoso, sts.fabrikam
    flow = await start_flow(sts, fabrikam)
    status, page = await submit(sts, login(contoso, flow))
    assert status == 400 and "AADSTS50034" in page
    _, body = await poll(sts, fabrikam, flow)
    assert error_of(body)[0] == "authorization_pending"


async def test_code_is_bound_to_its_tenant_and_client(sts: Sts) -> None:
    contoso, fabrikam = sts.contoso, sts.fabrikam
    flow = await start_flow(sts, contoso)
    status, _ = await submit(sts, login(contoso, flow))
    assert status == 200
    _, body = await poll(sts, fabrikam, flow)  # another tenant's endpoint
    assert error_of(body) == ("invalid_grant", 70000)
    _, body = await poll(sts, contoso, flow, client_id=contoso.app_client_id)  # another client
    assert error_of(body) == ("invalid_grant", 70000)
    status, body = await poll(sts, contoso, flow)  # still redeemable by its own client
    assert status == 200, body


async def test_csrf_cookie_must_match_and_origin_must_be_ours(sts: Sts) -> None:
    t = sts.contoso
    flow = await start_flow(sts, t)
    token = await csrf_token(sts)
    form = {**login(t, flow), "csrf_token": token}
    r = await sts.client.post("/devicelogin", data={**form, "csrf_token": "x" * 43})
    assert r.status == 400 and "AADSTS90100" in await r.text()
    r = await sts.client.post("/devicelogin", data=form, headers={"Origin": "https://evil.example"})
    assert r.status == 400 and "AADSTS90100" in await r.text()
    sts.client.session.cookie_jar.clear()
    r = await sts.client.post("/devicelogin", data=form)
    assert r.status == 400 and "AADSTS90100" in await r.text()
    _, body = await poll(sts, t, flow)
    assert error_of(body)[0] == "authorization_pending"  # nothing was approved


async def test_devicecode_endpoint_validates_client_and_scope(sts: Sts) -> None:
    t = sts.contoso
    url = f"/{t.id}/oauth2/v2.0/devicecode"
    r = await sts.client.post(url, data={"client_id": str(uuid.uuid4()), "scope": CA_SCOPE})
    assert error_of(await r.json()) == ("unauthorized_client", 700016)
    r = await sts.client.post(url, data={"client_id": AGENT, "scope": "urn:pta:other/.default"})
    assert error_of(await r.json()) == ("invalid_scope", 70011)
    r = await sts.client.post(url, data={"scope": CA_SCOPE})
    assert error_of(await r.json()) == ("invalid_request", 900144)
    r = await sts.client.post("/nosuch.test/oauth2/v2.0/devicecode", data={"client_id": AGENT})
    assert error_of(await r.json()) == ("invalid_request", 90002)


async def test_unknown_device_code_is_invalid_grant(sts: Sts) -> None:
    t = sts.contoso
    _, body = await poll(sts, t, {"device_code": "not-a-code"})
    assert error_of(body) == ("invalid_grant", 70000)
    r = await sts.token(t.id, grant_type=DEVICE_GRANT, client_id=AGENT)
    assert error_of(await r.json()) == ("invalid_request", 900144)
