"""Helpers for end-to-end tests against the session stack (real STS, CA, agents)."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from cryptography.hazmat.primitives.asymmetric import rsa

from common import pki
from common.contracts import AGENT_CLIENT_ID, CA_SCOPE
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


# -- the CA as a tenant admin uses it -------------------------------------------------------


async def ca_admin_token(stack: Stack, username: str, password: str) -> str:
    """An access token for the CA (scope urn:pta:ca/.default) from the real STS."""
    doc = stack_doc(stack)
    tenant = tenant_doc(stack, username.rsplit("@", 1)[1])
    form = {
        "grant_type": "password",
        "client_id": AGENT_CLIENT_ID,
        "scope": CA_SCOPE,
        "username": username,
        "password": password,
    }
    url = f"{doc['sts_url']}/{tenant['id']}/oauth2/v2.0/token"
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=form, ssl=client_ssl(stack)) as r:
            body = await r.json(content_type=None)
            assert r.status == 200, body
            return str(body["access_token"])


@dataclass(frozen=True, slots=True)
class RegisteredAgent:
    agent_id: str
    tenant_id: str
    cert_file: Path
    key_file: Path


async def register_agent(stack: Stack, token: str, folder: Path) -> RegisteredAgent:
    """Register a new agent through the real CA (as `pta-agent register` does)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = pki.csr_pem(pki.new_agent_csr(key)).decode()
    body = {"csr": csr, "host": "flood.test", "version": "1.0.0"}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{stack_doc(stack)['ca_url']}/agents/register",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            ssl=client_ssl(stack),
        ) as r:
            answer = await r.json()
            assert r.status == 201, answer
    folder.mkdir(parents=True, exist_ok=True)
    key_file = folder / "agent.key"
    pki.write_private_key(key_file, key)
    cert_file = folder / "agent.crt"
    cert_file.write_text(answer["certificate"])
    return RegisteredAgent(answer["agent_id"], answer["tenant_id"], cert_file, key_file)


async def bootstrap_agent(stack: Stack, agent: RegisteredAgent) -> str:
    """The agent's broker URL with its credentials and its tenant's vhost, from the real CA
    over mutual TLS (AMQPS verified against the stack's service CA)."""
    context = ssl.create_default_context(cafile=stack_doc(stack)["ca_bundle"])
    context.load_cert_chain(agent.cert_file, agent.key_file)
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{stack_doc(stack)['ca_url']}/agents/bootstrap", json={}, ssl=context
        ) as r:
            answer = await r.json()
            assert r.status == 200, answer
    parts = urlsplit(answer["amqp_url"])
    user, key = quote(answer["username"], safe=""), quote(answer["access_key"], safe="")
    vhost = quote(answer["vhost"], safe="")
    cafile = quote(stack_doc(stack)["ca_bundle"])
    return f"{parts.scheme}://{user}:{key}@{parts.netloc}/{vhost}?cafile={cafile}"


async def delete_agent(stack: Stack, token: str, agent_id: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.delete(
            f"{stack_doc(stack)['ca_url']}/agents/{agent_id}",
            headers={"Authorization": f"Bearer {token}"},
            ssl=client_ssl(stack),
        ) as r:
            assert r.status in (200, 204), await r.text()


# -- the services' log files ----------------------------------------------------------------


class LogTail:
    """The lines a log file gains after this object is made."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def new_text(self) -> str:
        with self.path.open("rb") as f:
            f.seek(self.offset)
            return f.read().decode("utf-8", errors="replace")

    def new_lines(self) -> list[str]:
        return self.new_text().splitlines()

    async def wait_for(self, predicate: Callable[[str], bool], timeout_s: float = 10) -> str:
        """The new text once `predicate` holds for it (log files have no event to await)."""
        async with asyncio.timeout(timeout_s):
            # A file has no event to await: poll it.
            while not predicate(text := self.new_text()):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        return text
