"""Strict-Transport-Security on every HTTPS answer of the STS and the CA (issue 8, finding 8).

Through the stack's real servers: successes, routing errors, OAuth and CA errors all carry
the header; the CA's plain-HTTP CRL listener does not.
"""

from __future__ import annotations

import aiohttp
import pytest

from infra.stack import Stack
from tests.e2e.support import client_ssl, stack_doc, tenant_doc

pytestmark = pytest.mark.stack

HSTS = "max-age=31536000; includeSubDomains"  # a year, subdomains too (as Entra sends)


async def _answer(stack: Stack, method: str, url: str, **kwargs: object) -> tuple[int, str | None]:
    async with aiohttp.ClientSession() as http:
        ssl = client_ssl(stack) if url.startswith("https:") else None
        async with http.request(method, url, ssl=ssl, allow_redirects=False, **kwargs) as r:
            await r.read()
            return r.status, r.headers.get("Strict-Transport-Security")


async def test_every_sts_answer_carries_hsts(stack: Stack) -> None:
    doc = stack_doc(stack)
    tenant = tenant_doc(stack, "contoso.test")["id"]
    for sts in doc["sts_urls"]:
        cases = [
            ("GET", f"{sts}/{tenant}/v2.0/.well-known/openid-configuration", {}, 200),
            ("GET", f"{sts}/{tenant}/discovery/v2.0/keys", {}, 200),
            ("GET", f"{sts}/no/such/page", {}, 404),
            ("POST", f"{sts}/{tenant}/oauth2/v2.0/token", {"data": {"grant_type": "x"}}, 400),
            ("PUT", f"{sts}/{tenant}/oauth2/v2.0/token", {}, 405),
        ]
        for method, url, kwargs, expected in cases:
            status, hsts = await _answer(stack, method, url, **kwargs)
            assert (status, hsts) == (expected, HSTS), (method, url)


async def test_every_ca_answer_carries_hsts_but_not_the_crls(stack: Stack) -> None:
    doc = stack_doc(stack)
    ca = doc["ca_url"]
    cases = [
        ("GET", f"{ca}/.well-known/pta-configuration", {}, 200),
        ("GET", f"{ca}/agents", {}, 401),
        ("POST", f"{ca}/agents/register", {"headers": {"Authorization": "Bearer x.y.z"}}, 401),
        ("GET", f"{ca}/no/such/page", {}, 404),
    ]
    for method, url, kwargs, expected in cases:
        status, hsts = await _answer(stack, method, url, **kwargs)
        assert (status, hsts) == (expected, HSTS), (method, url)
    # Plain HTTP: a browser ignores HSTS there (RFC 6797 section 8.1), and it is not sent.
    assert await _answer(stack, "GET", f"{doc['crl_url']}/pta.crl") == (200, None)
