"""The device authorization grant driven like a device and a person: start, poll, and
the browser form (GET it, read the CSRF token from the hidden field, POST)."""

from __future__ import annotations

import re
from typing import Any

from infra.demo import DemoTenant
from tests.support.sts_harness import AGENT, CA_SCOPE, DEVICE_GRANT, Sts

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


async def start_flow(sts: Sts, t: DemoTenant, client_id: str = AGENT) -> dict[str, Any]:
    r = await sts.client.post(
        f"/{t.domain}/oauth2/v2.0/devicecode",
        data={"client_id": client_id, "scope": f"{CA_SCOPE} openid profile offline_access"},
    )
    assert r.status == 200, await r.text()
    assert r.headers["Cache-Control"] == "no-store"
    flow: dict[str, Any] = await r.json()
    return flow


async def poll(sts: Sts, t: DemoTenant, flow: dict[str, Any], client_id: str = AGENT) -> Any:
    r = await sts.token(
        t.id, grant_type=DEVICE_GRANT, client_id=client_id, device_code=flow["device_code"]
    )
    return r.status, await r.json()


async def csrf_token(sts: Sts) -> str:
    r = await sts.client.get("/devicelogin")
    assert r.status == 200
    assert r.headers["X-Frame-Options"] == "DENY"
    assert "script-src" not in r.headers["Content-Security-Policy"]  # default-src 'none'
    match = _CSRF.search(await r.text())
    assert match
    return match.group(1)


async def submit(sts: Sts, form: dict[str, str], *, with_csrf: bool = True) -> tuple[int, str]:
    data = dict(form)
    if with_csrf:
        data["csrf_token"] = await csrf_token(sts)
    r = await sts.client.post("/devicelogin", data=data)
    return r.status, await r.text()


def login(t: DemoTenant, flow: dict[str, Any], **extra: str) -> dict[str, str]:
    return {
        "user_code": flow["user_code"],
        "username": t.admin_username,
        "password": t.admin_password,
        "action": "approve",
        **extra,
    }
