"""Sign-in through the whole stack: STS → RabbitMQ → agents → slapd → STS (docs/design.md §3.3).

Each seeded directory state gives its AADSTS code; unknown users never reach an agent;
MSAL for Python, unmodified, signs in; both STS replicas serve concurrently.
"""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import jwt
import pytest

from infra.stack import Stack
from tests.e2e.support import client_ssl, password_grant, stack_doc, tenant_doc, user_password

pytestmark = pytest.mark.stack

STATE_CODES = {
    "alice@contoso.test": None,  # success
    "erin@contoso.test": 50144,  # password_expired
    "maya@contoso.test": 50055,  # must_change_password
    "luke@contoso.test": 50053,  # account_locked
    "dora@contoso.test": 50057,  # account_disabled
    "alice@fabrikam.test": None,
    "erin@fabrikam.test": 50144,
}


@pytest.mark.parametrize("username", sorted(STATE_CODES))
async def test_each_directory_state_gives_its_code(stack: Stack, username: str) -> None:
    answer = await password_grant(stack, username, user_password(stack, username))
    expected = STATE_CODES[username]
    if expected is None:
        assert answer.status == 200, answer.body
        assert answer.body["token_type"] == "Bearer"
        claims = jwt.decode(answer.body["id_token"], options={"verify_signature": False})
        assert claims["preferred_username"] == username
    else:
        assert answer.status == 400, answer.body
        assert answer.code == expected, answer.body
        assert answer.body["error_description"].startswith(f"AADSTS{expected}")
        assert answer.body["correlation_id"]


async def test_wrong_password_is_50126(stack: Stack) -> None:
    answer = await password_grant(stack, "bob@contoso.test", "not-the-password")
    assert answer.status == 400 and answer.body["error"] == "invalid_grant"
    assert answer.code == 50126


async def test_unknown_user_is_50034(stack: Stack) -> None:
    answer = await password_grant(stack, "nobody@contoso.test", "whatever")
    assert answer.code == 50034


async def test_both_replicas_serve_concurrently(stack: Stack) -> None:
    doc = stack_doc(stack)
    bulk = tenant_doc(stack, "contoso.test")["bulk_users"]
    async with aiohttp.ClientSession() as http:
        calls = [
            password_grant(
                stack,
                bulk["pattern"].format(n=n),
                bulk["password"],
                sts_url=doc["sts_urls"][n % 2],
                session=http,
            )
            for n in range(1, 61)
        ]
        answers = await asyncio.gather(*calls)
    assert [a.status for a in answers] == [200] * 60, [a.body for a in answers if a.status != 200]


async def test_id_token_verifies_against_the_jwks(stack: Stack) -> None:
    doc = stack_doc(stack)
    tenant = tenant_doc(stack, "contoso.test")
    answer = await password_grant(
        stack, "bob@contoso.test", user_password(stack, "bob@contoso.test")
    )
    assert answer.status == 200, answer.body
    async with aiohttp.ClientSession() as http:
        url = f"{doc['sts_url']}/{tenant['id']}/discovery/v2.0/keys"
        async with http.get(url, ssl=client_ssl(stack)) as r:
            jwks = await r.json()
    token = answer.body["id_token"]
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(jwt.PyJWK(k) for k in jwks["keys"] if k["kid"] == kid)
    claims = jwt.decode(
        token,
        key.key,
        algorithms=["ES256"],
        audience=tenant["app"]["client_id"],
        issuer=f"{doc['sts_url']}/{tenant['id']}/v2.0",
    )
    assert claims["tid"] == tenant["id"]
    assert claims["preferred_username"] == "bob@contoso.test"
    uuid.UUID(claims["oid"])


async def test_smart_lockout_stops_guessing_before_the_directory_locks(stack: Stack) -> None:
    """docs/design.md: the cloud lockout trips first, so the user is not locked on-premises."""
    import ldap3

    bulk = tenant_doc(stack, "fabrikam.test")["bulk_users"]
    username = bulk["pattern"].format(n=800)
    codes = [(await password_grant(stack, username, f"wrong-guess-{i}")).code for i in range(8)]
    assert codes[:4] == [50126] * 4, codes
    assert set(codes[4:]) == {50053}, codes  # smart lockout, no agent asked
    tenant = next(t for t in stack.demo.tenants if t.domain == "fabrikam.test")

    def directory_lock_time() -> list[str]:
        conn = ldap3.Connection(
            ldap3.Server(stack.ldap_url, get_info=ldap3.NONE),
            tenant.service_dn,
            tenant.service_password,
            auto_bind=True,
        )
        try:
            conn.search(
                tenant.people_dn,
                f"(uid={tenant.bulk_uid(800)})",
                attributes=["pwdAccountLockedTime", "pwdFailureTime"],
            )
            entry = conn.entries[0]
            return [str(v) for v in entry["pwdAccountLockedTime"].values]
        finally:
            conn.unbind()

    assert await asyncio.to_thread(directory_lock_time) == []


async def test_one_correlation_id_finds_the_sign_in_on_both_sides(stack: Stack) -> None:
    """docs/contributing.md 7: the STS and the agent log the same correlation id for one sign-in."""
    import json as jsonlib

    correlation = str(uuid.uuid4())
    doc = stack_doc(stack)
    tenant = tenant_doc(stack, "contoso.test")
    form = {
        "grant_type": "password",
        "client_id": tenant["app"]["client_id"],
        "scope": "openid",
        "username": "bob@contoso.test",
        "password": "a-wrong-password",
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{doc['sts_url']}/{tenant['id']}/oauth2/v2.0/token",
            data=form,
            headers={"client-request-id": correlation},
            ssl=client_ssl(stack),
        ) as r:
            body = await r.json()
    assert body["correlation_id"] == correlation

    def events_with_the_id() -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for path in stack.layout.logs_dir.glob("*.log"):
            for line in path.read_text(errors="replace").splitlines():
                if correlation in line and line.startswith("{"):
                    event = jsonlib.loads(line)
                    found.setdefault(path.stem, set()).add(event["event"])
        return found

    deadline = asyncio.get_running_loop().time() + 5
    found: dict[str, set[str]] = {}
    while asyncio.get_running_loop().time() < deadline:
        found = await asyncio.to_thread(events_with_the_id)
        if any(k.startswith("agent-") for k in found) and any(k.startswith("sts") for k in found):
            break
        await asyncio.sleep(0.2)
    agent_events = set().union(*(v for k, v in found.items() if k.startswith("agent-")))
    sts_events = set().union(*(v for k, v in found.items() if k.startswith("sts")))
    assert "password_validated" in agent_events, found
    assert sts_events, found
