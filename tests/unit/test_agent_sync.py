"""agent.sync without I/O: entry mapping, de-duplication, batching, pushing, the periodic
sync inside the runner. The real slapd and CA are in tests/integration/test_agent_sync.py
and test_ca_sync.py."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any, cast

import orjson
import pytest

from agent import runner
from agent.cloud import CaClient, InvalidRequest, SyncAnswer
from agent.sync import (
    MAX_BATCH_USERS,
    DirectoryUser,
    NoUsersFound,
    Skip,
    SourceResult,
    batches,
    dedupe,
    map_entry,
    push,
    sync_once,
)
from tests.support.agent_state import issue, saved_registration
from tests.unit.test_agent_runner import (  # the fixtures are used by name
    FakeCa,
    directory,  # noqa: F401
    grant_for,
    links,  # noqa: F401
    settings_for,
)

ENTRY_UUID = "8C2B6E5A-0F8E-103F-8D3A-3D6B1E2C4F5A"
OPENLDAP = {"login_attribute": "uid", "domain": "contoso.test", "kind": "openldap"}


def entry(**attributes: str | bytes | list[bytes]) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for name, value in attributes.items():
        if isinstance(value, list):
            out[name] = value
        else:
            out[name] = [value.encode() if isinstance(value, str) else value]
    return out


# --------------------------------------------------------------------------- mapping


def test_openldap_uid_entry() -> None:
    user = map_entry(
        entry(uid="Alice", entryUUID=ENTRY_UUID, displayName="Alice Active", cn="alice"),
        **OPENLDAP,
    )
    assert user == DirectoryUser("alice@contoso.test", ENTRY_UUID.lower(), "Alice Active")


def test_attribute_names_are_case_insensitive() -> None:
    user = map_entry(entry(UID="bob", ENTRYUUID=ENTRY_UUID, CN="Bob B"), **OPENLDAP)
    assert user == DirectoryUser("bob@contoso.test", ENTRY_UUID.lower(), "Bob B")


def test_display_name_falls_back_to_cn_then_empty() -> None:
    assert isinstance(user := map_entry(entry(uid="a", entryUUID=ENTRY_UUID, cn="A"), **OPENLDAP),
                      DirectoryUser)  # fmt: skip
    assert user.display_name == "A"
    user = map_entry(entry(uid="a", entryUUID=ENTRY_UUID), **OPENLDAP)
    assert isinstance(user, DirectoryUser) and user.display_name == ""


def test_display_name_is_made_printable_and_bounded() -> None:
    hostile = "Eve\x1b[31m\nAdmin\u200b\u00a0X" + "y" * 400
    user = map_entry(entry(uid="eve", entryUUID=ENTRY_UUID, displayName=hostile), **OPENLDAP)
    assert isinstance(user, DirectoryUser)
    assert user.display_name.isprintable() and len(user.display_name) == 256
    assert user.display_name.startswith("Eve [31m Admin X")


@pytest.mark.parametrize(
    ("attribute", "value", "expected"),
    [
        ("mail", "Carol.Smith@Contoso.test", "carol.smith@contoso.test"),
        ("userPrincipalName", "DAVE@contoso.test", "dave@contoso.test"),
    ],
)
def test_mail_and_upn_are_the_whole_username(attribute: str, value: str, expected: str) -> None:
    user = map_entry(
        {attribute: [value.encode()], "entryUUID": [ENTRY_UUID.encode()]},
        login_attribute=attribute,
        domain="contoso.test",
        kind="openldap",
    )
    assert isinstance(user, DirectoryUser) and user.username == expected


def test_ad_object_guid_is_the_canonical_guid_string() -> None:
    guid = uuid.UUID("0c4a6b1e-2f3d-4e5a-9b8c-7d6e5f4a3b2c")
    user = map_entry(
        {
            "userPrincipalName": [b"erin@corp.test"],
            "objectGUID": [guid.bytes_le],  # AD stores the first three fields little-endian
            "displayName": [b"Erin"],
        },
        login_attribute="userPrincipalName",
        domain="corp.test",
        kind="ad",
    )
    assert user == DirectoryUser("erin@corp.test", str(guid), "Erin")


@pytest.mark.parametrize(
    ("attributes", "reason"),
    [
        ({"entryUUID": ENTRY_UUID}, Skip.NO_LOGIN),
        ({"uid": "  ", "entryUUID": ENTRY_UUID}, Skip.NO_LOGIN),
        ({"uid": "a b", "entryUUID": ENTRY_UUID}, Skip.BAD_LOGIN),
        ({"uid": "a@b", "entryUUID": ENTRY_UUID}, Skip.BAD_LOGIN),
        ({"uid": "x\x00y", "entryUUID": ENTRY_UUID}, Skip.BAD_LOGIN),
        ({"uid": "u" * 300, "entryUUID": ENTRY_UUID}, Skip.BAD_LOGIN),
        ({"uid": b"\xff\xfe", "entryUUID": ENTRY_UUID}, Skip.NO_LOGIN),
        ({"uid": "frank"}, Skip.NO_IMMUTABLE_ID),
        ({"uid": "frank", "entryUUID": "not-a-uuid"}, Skip.NO_IMMUTABLE_ID),
    ],
)
def test_unusable_entries_are_skipped(attributes: dict[str, Any], reason: Skip) -> None:
    assert map_entry(entry(**attributes), **OPENLDAP) is reason


def test_mail_of_another_domain_is_skipped() -> None:
    mapped = map_entry(
        entry(mail="gina@fabrikam.test", entryUUID=ENTRY_UUID),
        login_attribute="mail",
        domain="contoso.test",
        kind="openldap",
    )
    assert mapped is Skip.OTHER_DOMAIN


def test_bad_object_guid_is_skipped() -> None:
    mapped = map_entry(
        {"userPrincipalName": [b"h@corp.test"], "objectGUID": [b"short"]},
        login_attribute="userPrincipalName",
        domain="corp.test",
        kind="ad",
    )
    assert mapped is Skip.NO_IMMUTABLE_ID


def test_ambiguous_users_are_dropped_and_the_rest_sorted() -> None:
    users = [
        DirectoryUser("zed@c.test", "id-z", "Z"),
        DirectoryUser("amy@c.test", "id-a1", "A1"),
        DirectoryUser("amy@c.test", "id-a2", "A2"),  # one username, two entries
        DirectoryUser("bea@c.test", "id-b", "B"),
        DirectoryUser("cat@c.test", "id-b", "C"),  # one immutable id, two usernames
    ]
    kept, dropped = dedupe(users)
    assert [u.username for u in kept] == ["zed@c.test"]
    assert dropped == 4


# --------------------------------------------------------------------------- batching


def _users(n: int, *, name_len: int = 1) -> list[DirectoryUser]:
    return [
        DirectoryUser(f"u{i:05d}{'x' * name_len}@c.test", str(uuid.UUID(int=i)), "D" * 200)
        for i in range(n)
    ]


def test_batches_hold_at_most_1000_users() -> None:
    sizes = [len(b) for b in batches(_users(2500))]
    assert sizes == [1000, 1000, 500] and MAX_BATCH_USERS == 1000


def test_batches_stay_under_the_byte_budget() -> None:
    users = _users(1000, name_len=200)
    chunks = list(batches(users, max_bytes=64 * 1024))
    assert len(chunks) > 1 and sum(len(c) for c in chunks) == 1000
    for chunk in chunks:
        body = orjson.dumps({"users": [u.as_json() for u in chunk]})
        assert len(body) <= 64 * 1024 + 100


# --------------------------------------------------------------------------- pushing


class SyncCa:
    def __init__(self, fail_at: int | None = None) -> None:
        self.calls: list[tuple[str, int, bool]] = []
        self.fail_at = fail_at

    async def sync_users(
        self, sync_id: str, users: list[dict[str, str]], *, final: bool
    ) -> SyncAnswer:
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise InvalidRequest("refused", status=400)
        self.calls.append((sync_id, len(users), final))
        return SyncAnswer(upserted=len(users), deleted=3 if final else 0)


async def test_push_sends_one_run_with_the_last_batch_final() -> None:
    ca = SyncCa()
    answers = await push(cast(CaClient, ca), _users(2100), sync_id="s-1")
    assert [(s, n, f) for s, n, f in ca.calls] == [
        ("s-1", 1000, False),
        ("s-1", 1000, False),
        ("s-1", 100, True),
    ]
    assert sum(a.upserted for a in answers) == 2100 and answers[-1].deleted == 3


async def test_a_refused_batch_stops_the_run_before_the_final_one() -> None:
    ca = SyncCa(fail_at=1)
    with pytest.raises(InvalidRequest):
        await push(cast(CaClient, ca), _users(2100), sync_id="s-2")
    assert [f for _, _, f in ca.calls] == [False]  # nothing final: nothing deleted


async def test_an_empty_read_is_never_sent() -> None:
    ca = SyncCa()
    with pytest.raises(NoUsersFound, match="delete every synced user"):
        await push(cast(CaClient, ca), [], sync_id="s-3")
    assert ca.calls == []


class FakeSource:
    def __init__(self, users: list[DirectoryUser], skipped: dict[str, int] | None = None):
        self.result = SourceResult(tuple(users), skipped or {}, len(users))
        self.reads = 0
        self.read_seen = asyncio.Event()

    async def read(self) -> SourceResult:
        self.reads += 1
        self.read_seen.set()
        return self.result


async def test_sync_once_reports_counts_and_uses_a_fresh_sync_id() -> None:
    ca = SyncCa()
    source = FakeSource(_users(3), {"other_domain": 2})
    first = await sync_once(cast(Any, source), cast(CaClient, ca))
    second = await sync_once(cast(Any, source), cast(CaClient, ca))
    assert (first.upserted, first.deleted, first.batches) == (3, 3, 1)
    assert first.source.skipped_total == 2
    assert first.sync_id != second.sync_id
    assert uuid.UUID(first.sync_id).version == 4


async def test_dry_run_sends_nothing() -> None:
    report = await sync_once(cast(Any, FakeSource(_users(2))), None, dry_run=True)
    assert report.dry_run and report.upserted == 0 and len(report.source.users) == 2


# --------------------------------------------------------------------------- in run()


@pytest.mark.usefixtures("links")
async def test_run_syncs_soon_after_start_and_reports_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    issued = issue()
    saved_registration(tmp_path, issued)
    monkeypatch.setattr(runner, "FIRST_SYNC_DELAY_S", 0.01)
    source = FakeSource(_users(5))
    monkeypatch.setattr(runner, "UserSource", lambda settings: source)
    ca = FakeCa([grant_for(issued)])
    pushed: list[int] = []

    async def sync_users(sync_id: str, users: list[Any], *, final: bool) -> SyncAnswer:
        pushed.append(len(users))
        return SyncAnswer(upserted=len(users), deleted=0)

    ca.sync_users = sync_users  # type: ignore[attr-defined]
    monkeypatch.setattr(runner, "CaClient", ca)
    stop = asyncio.Event()
    settings = settings_for(tmp_path, sync_interval_s=3600, heartbeat_interval_s=0.05)
    task = asyncio.create_task(runner.run(settings, stop=stop))
    async with asyncio.timeout(5):
        await source.read_seen.wait()
        while not any("sync ok" in d for d in ca.details):
            ca.heartbeat_seen.clear()
            await ca.heartbeat_seen.wait()
    stop.set()
    await asyncio.wait_for(task, 5)
    assert pushed == [5] and source.reads == 1  # the next one is an hour away
    assert any("5 users" in d for d in ca.details)


@pytest.mark.usefixtures("links")
async def test_a_failed_sync_does_not_stop_the_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    issued = issue()
    saved_registration(tmp_path, issued)
    monkeypatch.setattr(runner, "FIRST_SYNC_DELAY_S", 0.01)
    source = FakeSource([])  # an empty directory: NoUsersFound, nothing sent
    monkeypatch.setattr(runner, "UserSource", lambda settings: source)
    ca = FakeCa([grant_for(issued)])
    monkeypatch.setattr(runner, "CaClient", ca)
    stop = asyncio.Event()
    settings = settings_for(tmp_path, sync_interval_s=3600, heartbeat_interval_s=0.05)
    task = asyncio.create_task(runner.run(settings, stop=stop))
    async with asyncio.timeout(5):
        while not any("sync failed" in d for d in ca.details):
            ca.heartbeat_seen.clear()
            await ca.heartbeat_seen.wait()
    assert not task.done()
    stop.set()
    await asyncio.wait_for(task, 5)
    assert any("NoUsersFound" in d for d in ca.details)
