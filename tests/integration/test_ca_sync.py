"""``POST /agents/sync`` (ca/sync.py) end to end: the stack's CA process and PostgreSQL, the
agents it registered (their state folders, through ``agent.cloud.CaClient`` over mutual
TLS), and ``pta-agent sync`` itself.

Isolation: the stack's contoso users are what the STS tests sign in with, so every run
here that ends (``final``) sends the tenant's *real* user list, read from the stack's
slapd with ``agent.sync.UserSource``, plus at most one synthetic user of a unique name.
The real users therefore keep their rows and oids; the synthetic ones are gone when the
module ends. Refused batches write nothing by contract, which the tests check.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest
import pytest_asyncio

from agent.cloud import (
    CaClient,
    ClientCertificateRequired,
    DomainNotVerified,
    InvalidRequest,
    SyncConflict,
)
from agent.sync import DirectoryUser, UserSource, push
from infra.demo import DemoTenant
from infra.stack import Stack
from tests.support.stack_agents import (
    agent_env,
    directory_settings,
    pta_agent,
    stack_agent,
)

pytestmark = pytest.mark.stack


@pytest_asyncio.fixture(loop_scope="session")
async def db(stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.postgres_dsn)
    try:
        yield conn
    finally:
        await conn.close()


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def contoso_users(stack: Stack) -> tuple[DirectoryUser, ...]:
    """Contoso's real users, as the directory has them."""
    result = await UserSource(directory_settings(stack, stack.demo.tenants[0])).read()
    assert len(result.users) >= 1006
    return result.users


async def users_of(db: asyncpg.Connection, tenant_id: str) -> dict[str, dict[str, Any]]:
    """immutable_id -> row, for one tenant."""
    rows = await db.fetch(
        """SELECT id::text AS id, username, immutable_id, display_name,
                  synced_by::text AS synced_by
           FROM users WHERE tenant_id = $1""",
        uuid.UUID(tenant_id),
    )
    return {row["immutable_id"]: dict(row) for row in rows}


def synthetic(name: str, immutable_id: str, tenant: DemoTenant) -> DirectoryUser:
    return DirectoryUser(f"{name}@{tenant.domain}", immutable_id, f"Sync Test {name}")


def as_json(users: list[DirectoryUser]) -> list[dict[str, str]]:
    return [u.as_json() for u in users]


# --------------------------------------------------------------------------- round trip


async def test_upsert_rename_and_final_delete(
    stack: Stack, db: asyncpg.Connection, contoso_users: tuple[DirectoryUser, ...]
) -> None:
    agent = stack_agent(stack, 0)
    tenant = agent.tenant
    before = await users_of(db, tenant.id)
    tag = uuid.uuid4().hex[:10]
    immutable = str(uuid.uuid4())
    first = synthetic(f"synctest-{tag}", immutable, tenant)
    renamed = synthetic(f"synctest-{tag}-renamed", immutable, tenant)
    run_a = str(uuid.uuid4())
    async with agent.client() as ca:
        # Run A, batch 1: every real user plus a new one.
        answers = await push_batches(ca, run_a, [*contoso_users, first], final=False)
        assert sum(a["upserted"] for a in answers) == len(contoso_users) + 1
        rows = await users_of(db, tenant.id)
        new = rows[immutable]
        assert new["username"] == first.username and new["synced_by"] == agent.agent_id
        assert uuid.UUID(new["id"]).version == 4 and new["id"] not in {
            r["id"] for r in before.values()
        }
        for user in contoso_users:  # the real users kept their oids
            if user.immutable_id in before:
                assert rows[user.immutable_id]["id"] == before[user.immutable_id]["id"]
        # Run A, final batch: the user was renamed in the directory; same oid.
        answer = await ca.sync_users(run_a, as_json([renamed]), final=True)
        assert (answer.upserted, answer.deleted) == (1, 0)
        rows = await users_of(db, tenant.id)
        assert rows[immutable]["id"] == new["id"]
        assert rows[immutable]["username"] == renamed.username
        assert rows[immutable]["display_name"] == renamed.display_name
        # A finished run takes no more batches.
        with pytest.raises(SyncConflict):
            await ca.sync_users(run_a, as_json([renamed]), final=False)
        # Run B: the user is gone from the directory, so the final batch deletes it.
        stale = {i for i in (await users_of(db, tenant.id)) if i not in _ids(contoso_users)}
        assert immutable in stale
        answers = await push_batches(ca, str(uuid.uuid4()), list(contoso_users), final=True)
    assert answers[-1]["deleted"] == len(stale)
    after = await users_of(db, tenant.id)
    assert immutable not in after
    assert set(after) == _ids(contoso_users)
    alice = next(u for u in contoso_users if u.username == f"alice@{tenant.domain}")
    if alice.immutable_id in before:
        assert after[alice.immutable_id]["id"] == before[alice.immutable_id]["id"]


async def push_batches(
    ca: CaClient, sync_id: str, users: list[DirectoryUser], *, final: bool
) -> list[dict[str, int]]:
    """Send ``users`` as one run's batches of 1,000; the last one ``final`` if asked."""
    out = []
    for start in range(0, len(users), 1000):
        chunk = users[start : start + 1000]
        is_last = start + 1000 >= len(users)
        answer = await ca.sync_users(sync_id, as_json(chunk), final=final and is_last)
        out.append({"upserted": answer.upserted, "deleted": answer.deleted})
    return out


def _ids(users: tuple[DirectoryUser, ...] | list[DirectoryUser]) -> set[str]:
    return {u.immutable_id for u in users}


async def test_a_swap_of_two_usernames_keeps_both_oids(
    stack: Stack, db: asyncpg.Connection, contoso_users: tuple[DirectoryUser, ...]
) -> None:
    agent = stack_agent(stack, 0)
    tenant = agent.tenant
    tag = uuid.uuid4().hex[:10]
    one, two = str(uuid.uuid4()), str(uuid.uuid4())
    a = synthetic(f"swap-{tag}-a", one, tenant)
    b = synthetic(f"swap-{tag}-b", two, tenant)
    async with agent.client() as ca:
        run = str(uuid.uuid4())
        await ca.sync_users(run, as_json([a, b]), final=False)
        ids = {i: r["id"] for i, r in (await users_of(db, tenant.id)).items() if i in (one, two)}
        swapped = [
            DirectoryUser(b.username, one, a.display_name),
            DirectoryUser(a.username, two, b.display_name),
        ]
        await ca.sync_users(run, as_json(swapped), final=False)
        rows = await users_of(db, tenant.id)
        assert rows[one]["id"] == ids[one] and rows[one]["username"] == b.username
        assert rows[two]["id"] == ids[two] and rows[two]["username"] == a.username
        await push_batches(ca, str(uuid.uuid4()), list(contoso_users), final=True)
    assert set(await users_of(db, tenant.id)) == _ids(contoso_users)


# --------------------------------------------------------------------------- refusals


async def test_a_user_of_another_tenants_domain_is_refused_and_nothing_written(
    stack: Stack, db: asyncpg.Connection
) -> None:
    agent = stack_agent(stack, 0)
    fabrikam = stack.demo.tenants[1]
    before = await users_of(db, agent.tenant.id)
    fabrikam_before = await users_of(db, fabrikam.id)
    own = synthetic(f"mixed-{uuid.uuid4().hex[:10]}", str(uuid.uuid4()), agent.tenant)
    foreign = synthetic(f"intruder-{uuid.uuid4().hex[:10]}", str(uuid.uuid4()), fabrikam)
    async with agent.client() as ca:
        with pytest.raises(DomainNotVerified) as caught:
            await ca.sync_users(str(uuid.uuid4()), as_json([own, foreign]), final=True)
    assert caught.value.status == 400 and caught.value.ca_code == "domain_not_verified"
    assert "fabrikam.test (1 users)" in caught.value.ca_message
    assert "Nothing of this batch was written" in caught.value.ca_message
    assert await users_of(db, agent.tenant.id) == before  # not even the own user
    assert await users_of(db, fabrikam.id) == fabrikam_before


async def test_a_fabrikam_agent_cannot_write_contoso_users(
    stack: Stack, db: asyncpg.Connection, contoso_users: tuple[DirectoryUser, ...]
) -> None:
    fabrikam_agent = stack_agent(stack, 1)
    contoso = stack.demo.tenants[0]
    contoso_before = await users_of(db, contoso.id)
    fabrikam_before = await users_of(db, fabrikam_agent.tenant.id)
    alice = next(u for u in contoso_users if u.username == f"alice@{contoso.domain}")
    hijack = DirectoryUser(alice.username, alice.immutable_id, "Mallory")
    async with fabrikam_agent.client() as ca:
        with pytest.raises(DomainNotVerified):
            await ca.sync_users(str(uuid.uuid4()), as_json([hijack]), final=True)
    assert await users_of(db, contoso.id) == contoso_before
    assert await users_of(db, fabrikam_agent.tenant.id) == fabrikam_before


def _u(**changes: Any) -> dict[str, Any]:
    return {"username": "a@contoso.test", "immutable_id": "x", "display_name": "", **changes}


@pytest.mark.parametrize(
    ("users", "needle"),
    [
        ([_u(username="Upper@contoso.test")], "lowercase"),
        ([_u(username="nodomain")], "local@domain"),
        ([_u(username="a@b@contoso.test")], "local@domain"),
        ([_u(username="a b@contoso.test")], "spaces"),
        ([_u(display_name="\x1b[2J")], "printable"),
        ([_u(immutable_id=" ")], "immutable_id"),
        ([_u(immutable_id="x" * 129)], "immutable_id"),
        ([_u(username="a" * 250 + "@contoso.test")], "username"),
        ([_u(display_name="d" * 257)], "display_name"),
        ([_u(extra=1)], "extra"),
        ([_u(), _u(immutable_id="y")], "appears twice"),
        ([_u(username="b@contoso.test"), _u()], "appears twice"),
        ([_u(username=f"u{i}@contoso.test", immutable_id=str(i)) for i in range(1001)], "users"),
    ],
)
async def test_bad_batches_are_refused_at_the_edge(
    stack: Stack, db: asyncpg.Connection, users: list[dict[str, Any]], needle: str
) -> None:
    agent = stack_agent(stack, 0)
    before = await users_of(db, agent.tenant.id)
    async with agent.client() as ca:
        with pytest.raises(InvalidRequest) as caught:
            await ca.sync_users(str(uuid.uuid4()), users, final=True)
    assert caught.value.status == 400 and needle in caught.value.ca_message
    assert await users_of(db, agent.tenant.id) == before


@pytest.mark.parametrize(
    "body",
    [
        {"sync_id": "not-a-uuid", "users": [], "final": False},
        {"sync_id": str(uuid.uuid4()).upper(), "users": [], "final": False},
        {"sync_id": str(uuid.uuid4()), "users": []},
        {"users": [], "final": True},
        [],
    ],
)
async def test_bad_envelopes_are_refused(stack: Stack, body: Any) -> None:
    agent = stack_agent(stack, 0)
    reg = agent.registration
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=reg.mutual_tls())) as http,
        http.post(f"{reg.record.ca_url}/agents/sync", json=body) as answer,
    ):
        assert answer.status == 400
        assert (await answer.json())["error"] == "invalid_request"


async def test_a_body_above_the_limit_is_refused(stack: Stack) -> None:
    agent = stack_agent(stack, 0)
    reg = agent.registration
    body = b'{"sync_id": "' + b"x" * (1024 * 1024 + 1) + b'"}'
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=reg.mutual_tls())) as http,
        http.post(
            f"{reg.record.ca_url}/agents/sync",
            data=body,
            headers={"Content-Type": "application/json"},
        ) as answer,
    ):
        assert answer.status == 413


async def test_sync_needs_the_agent_certificate(stack: Stack) -> None:
    agent = stack_agent(stack, 0)
    async with agent.client(mutual=False) as ca:
        with pytest.raises(ClientCertificateRequired):
            await ca.sync_users(str(uuid.uuid4()), [], final=False)


async def test_another_agent_cannot_continue_a_run(stack: Stack, db: asyncpg.Connection) -> None:
    first, second = stack_agent(stack, 0, 0), stack_agent(stack, 0, 1)
    run = str(uuid.uuid4())
    user = synthetic(f"run-{uuid.uuid4().hex[:10]}", str(uuid.uuid4()), first.tenant)
    async with first.client() as ca:
        await ca.sync_users(run, [], final=False)  # opens the run, writes nothing
    async with second.client() as ca:
        with pytest.raises(SyncConflict):
            await ca.sync_users(run, as_json([user]), final=True)
    assert user.immutable_id not in await users_of(db, first.tenant.id)


# --------------------------------------------------------------------------- the CLI


async def test_pta_agent_sync_sends_the_directory(
    stack: Stack, db: asyncpg.Connection, contoso_users: tuple[DirectoryUser, ...]
) -> None:
    agent = stack_agent(stack, 0)
    before = await users_of(db, agent.tenant.id)
    env = agent_env(stack, agent.tenant, agent.registration.dir.path)
    dry = subprocess.run(
        [pta_agent(), "sync", "--dry-run"], env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert f"Read {len(contoso_users)} users" in dry.stdout and "Dry run" in dry.stdout
    real = subprocess.run(
        [pta_agent(), "sync"], env=env, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert real.returncode == 0, real.stderr
    assert f"{len(contoso_users)} upserted" in real.stdout
    after = await users_of(db, agent.tenant.id)
    assert set(after) == _ids(contoso_users)
    for immutable, row in after.items():  # same users, same oids
        if immutable in before:
            assert row["id"] == before[immutable]["id"]
    assert agent.tenant.service_password not in real.stdout + real.stderr


async def test_push_refuses_an_empty_directory(stack: Stack, db: asyncpg.Connection) -> None:
    agent = stack_agent(stack, 0)
    before = await users_of(db, agent.tenant.id)
    from agent.sync import NoUsersFound

    async with agent.client() as ca:
        with pytest.raises(NoUsersFound):
            await push(ca, [], sync_id=str(uuid.uuid4()))
    assert await users_of(db, agent.tenant.id) == before
