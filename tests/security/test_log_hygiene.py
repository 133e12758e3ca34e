"""The stack's logs: private, one JSON object per line, no password typed as a username
(issue 8, finding 11). Through the real supervisord, STS and CA.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import ssl
import stat
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest

from common.contracts import AGENT_CLIENT_ID, CA_SCOPE
from infra.stack import Stack
from tests.e2e.support import LogTail, client_ssl, password_grant, stack_doc, tenant_doc

pytestmark = pytest.mark.stack

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def test_log_files_are_private(stack: Stack) -> None:
    logs = stack.layout.logs_dir
    assert stat.S_IMODE(logs.stat().st_mode) == 0o700
    files = [p for p in logs.rglob("*") if p.is_file()]
    assert {"supervisord.log", "sts.log", "ca.log"} <= {p.name for p in files}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for path in (p for p in logs.rglob("*") if p.is_dir()):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path


async def _send_raw(url: str, context: ssl.SSLContext, request: bytes) -> bytes:
    """One raw request over TLS; the server's answer (it closes after a parse error)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port, ssl=context)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(10):
            return await reader.read()
    finally:
        writer.close()


MALFORMED = [
    b"GET / HTTP/1.1\r\nHost: x\r\nThis is no header\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    # The second request on a connection: aiohttp logs a bad first line only at debug.
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /x HTTP/1.1 junk\r\nHost: x\r\n\r\n",
]


@pytest.mark.parametrize("service", ["sts", "ca"])
async def test_malformed_requests_are_logged_as_json_lines(stack: Stack, service: str) -> None:
    doc = stack_doc(stack)
    url = doc["sts_url"] if service == "sts" else doc["ca_url"]
    tail = LogTail(stack.layout.logs_dir / f"{service}.log")
    for request in MALFORMED:
        answer = await _send_raw(url, client_ssl(stack), request)
        assert b" 400 " in answer, answer[:200]
    text = await tail.wait_for(
        lambda t: t.count("http_request_malformed") + t.count("Error handling") >= len(MALFORMED)
    )
    lines = text.splitlines()
    for line in lines:
        assert isinstance(json.loads(line), dict), line
    assert sum(json.loads(line)["event"] == "http_request_malformed" for line in lines) == 3


async def test_a_password_typed_as_username_is_never_logged(stack: Stack) -> None:
    doc = stack_doc(stack)
    contoso = tenant_doc(stack, "contoso.test")
    marker = f"pw-{secrets.token_hex(8)}!x"  # what a user types into the wrong field
    tails = [LogTail(p) for p in stack.layout.logs_dir.glob("*.log")]

    # The token endpoint: a password grant with the password in the username field.
    answer = await password_grant(stack, marker, "whatever-was-typed-next")
    assert answer.status == 400, answer.body
    # A well-formed name is still logged (the line stays useful to an operator).
    known = f"nobody-{secrets.token_hex(4)}@contoso.test"
    answer = await password_grant(stack, known, "wrong")
    assert answer.status == 400, answer.body

    # /devicelogin: an admin approving a device code, with the password as username.
    sts = doc["sts_url"]
    jar = aiohttp.CookieJar(unsafe=True)  # the STS is reached by IP address
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        ctx = client_ssl(stack)
        async with http.post(
            f"{sts}/{contoso['id']}/oauth2/v2.0/devicecode",
            data={"client_id": AGENT_CLIENT_ID, "scope": CA_SCOPE},
            ssl=ctx,
        ) as r:
            flow = await r.json()
            assert r.status == 200, flow
        async with http.get(f"{sts}/devicelogin", ssl=ctx) as r:
            match = _CSRF.search(await r.text())
            assert match
        form = {
            "csrf_token": match.group(1),
            "user_code": flow["user_code"],
            "username": marker,
            "password": "whatever-was-typed-next",
            "action": "approve",
        }
        async with http.post(f"{sts}/devicelogin", data=form, ssl=ctx) as r:
            assert r.status == 400, await r.text()

    sts_tail = next(t for t in tails if t.path.name == "sts.log")
    sts_text = await sts_tail.wait_for(lambda t: "device_login_refused" in t)
    for tail in tails:
        assert marker not in tail.new_text().lower(), tail.path
    assert known in sts_text
    assert f'"username_chars":{len(marker)}' in sts_text.replace(" ", "")

    # Nor the sign-in log in the database (its writer flushes in the background).
    conn = await asyncpg.connect(stack.postgres_dsn)
    try:
        query = "SELECT count(*) FROM sign_ins WHERE username = $1"
        async with asyncio.timeout(10):
            while not await conn.fetchval(query, known):  # noqa: ASYNC110 - no event to await
                await asyncio.sleep(0.05)
        leaked = await conn.fetchval(
            "SELECT count(*) FROM sign_ins s WHERE strpos(s::text, $1) > 0", marker
        )
        assert leaked == 0
    finally:
        await conn.close()
