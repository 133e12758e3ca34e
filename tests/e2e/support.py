"""Helpers for end-to-end tests against the session stack (real STS, CA, agents)."""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp

from infra.stack import Stack


@dataclass(frozen=True, slots=True)
class TokenAnswer:
    status: int
    body: dict[str, Any]

    @property
    def code(self) -> int | None:
        """The AADSTS code of an error answer, None for success."""
        codes = self.body.get("error_codes")
        return int(codes[0]) if codes else None


def stack_doc(stack: Stack) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(stack.stack_json_path.read_text())
    return doc


def tenant_doc(stack: Stack, domain: str) -> dict[str, Any]:
    for t in stack_doc(stack)["tenants"]:
        if t["domain"] == domain:
            return dict(t)
    raise KeyError(domain)


def user_password(stack: Stack, username: str) -> str:
    domain = username.split("@", 1)[1]
    for u in tenant_doc(stack, domain)["users"]:
        if u["username"] == username:
            return str(u["password"])
    raise KeyError(username)


def client_ssl(stack: Stack) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=stack_doc(stack)["ca_bundle"])


async def password_grant(
    stack: Stack,
    username: str,
    password: str,
    *,
    sts_url: str | None = None,
    session: aiohttp.ClientSession | None = None,
    scope: str = "openid profile",
) -> TokenAnswer:
    """POST the password grant to the STS token endpoint of the username's tenant."""
    doc = stack_doc(stack)
    domain = username.rsplit("@", 1)[-1] if "@" in username else ""
    known = {t["domain"] for t in doc["tenants"]}
    # A hostile username's "domain" is no tenant's: send it to contoso's endpoint.
    tenant = tenant_doc(stack, domain if domain in known else "contoso.test")
    url = f"{sts_url or doc['sts_url']}/{tenant['id']}/oauth2/v2.0/token"
    form = {
        "grant_type": "password",
        "client_id": tenant["app"]["client_id"],
        "scope": scope,
        "username": username,
        "password": password,
    }
    own = session is None
    http = session or aiohttp.ClientSession()
    try:
        async with http.post(url, data=form, ssl=client_ssl(stack)) as r:
            return TokenAnswer(r.status, await r.json(content_type=None))
    finally:
        if own:
            await http.close()
