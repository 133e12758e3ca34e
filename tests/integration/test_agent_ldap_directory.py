"""LdapDirectory against the stack's real slapd (ppolicy), plus the Directory contract that
FakeDirectory keeps too.

Anything that fails a bind on purpose uses disposable users (added by the rootdn with
unique names, deleted afterwards): five failed binds within 15 minutes lock a user, and a
locked seeded user would break every later test. Seeded users only ever get their right
password here (locked and disabled ones are locked permanently anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import ldap3
import pytest
import pytest_asyncio

from agent import logon
from agent.directory import (
    BIND_MARGIN_S,
    REJECTED_DETAIL,
    Directory,
    DirectoryMisconfigured,
    DirectoryTimeout,
    DirectoryUnavailable,
    FakeDirectory,
    Verdict,
)
from agent.ldap_directory import (
    MAX_PASSWORD_CHARS,
    LdapDirectory,
    LdapDirectorySettings,
    ServiceAccountRefused,
)
from common.wire import Status
from infra import ldif
from infra.demo import Demo, DemoTenant, UserState
from infra.server import Layout
from infra.slapd import Slapd

pytestmark = [
    pytest.mark.stack,
    # ldap3 2.9.1 checks the server name with ssl.match_hostname (deprecated in 3.7, gone
    # in 3.12, where ldap3 falls back to its own backport); nothing we can change here.
    pytest.mark.filterwarnings("ignore:ssl.match_hostname:DeprecationWarning"),
]


class StackLike(Protocol):
    layout: Layout
    demo: Demo
    slapd: Slapd

    @property
    def ldap_url(self) -> str: ...


def _settings(stack: StackLike, tenant_index: int = 0, **overrides: Any) -> LdapDirectorySettings:
    tenant = stack.demo.tenants[tenant_index]
    base = LdapDirectorySettings(
        url=stack.ldap_url,
        bind_dn=tenant.service_dn,
        bind_password=tenant.service_password,
        base_dn=tenant.base_dn,
        domain=tenant.domain,
        timeout_s=5.0,
        pool_size=8,
    )
    return replace(base, **overrides)


def _user(tenant: DemoTenant, state: UserState) -> tuple[str, str]:
    user = next(u for u in tenant.users if u.state is state)
    return user.username, user.password


class CountingDirectory(LdapDirectory):
    """Records every LDAP operation the adapter starts (the instrumented bind function)."""

    def __init__(self, settings: LdapDirectorySettings) -> None:
        super().__init__(settings)
        self.operations: list[str] = []

    def _user_bind(self, conns: Any, dn: str, secret: bytes) -> Any:
        self.operations.append("bind")
        return super()._user_bind(conns, dn, secret)

    def _find(self, conn: Any, value: str) -> Any:
        self.operations.append("search")
        return super()._find(conn, value)


@pytest_asyncio.fixture(scope="module")
async def contoso(stack: StackLike) -> AsyncIterator[CountingDirectory]:
    directory = await CountingDirectory.open(_settings(stack, 0))
    try:
        yield directory
    finally:
        await directory.aclose()


@pytest_asyncio.fixture(scope="module")
async def fabrikam(stack: StackLike) -> AsyncIterator[LdapDirectory]:
    directory = await LdapDirectory.open(_settings(stack, 1))
    try:
        yield directory
    finally:
        await directory.aclose()


class Disposable:
    """Adds users to a tenant's people OU as the rootdn; deletes them at the end."""

    def __init__(self, stack: StackLike) -> None:
        self.stack = stack
        server = ldap3.Server(stack.ldap_url, get_info=ldap3.NONE, connect_timeout=5)
        self.admin = ldap3.Connection(
            server,
            user=stack.demo.ldap_admin_dn,
            password=stack.demo.ldap_admin_password,
            auto_bind=True,
            receive_timeout=10,
        )
        self.dns: list[str] = []

    def add(
        self, *, uid: str | None = None, password: str | None = None, mail: str | None = None
    ) -> tuple[str, str]:
        """A fresh active contoso user: (username uid@contoso.test, password)."""
        tenant = self.stack.demo.tenants[0]
        uid = uid or f"t-{uuid.uuid4().hex[:12]}"
        password = password or f"Pw-{uuid.uuid4().hex}"
        dn = ldif.user_dn(tenant, uid)
        attrs: dict[str, Any] = {"uid": uid, "cn": uid, "sn": uid, "userPassword": password}
        if mail:
            attrs["mail"] = mail
        # Cleartext on add: olcPPolicyHashCleartext hashes it (UTF-8 bytes as sent).
        assert self.admin.add(dn, ["inetOrgPerson"], attrs), self.admin.result
        self.dns.append(dn)
        return f"{uid}@{tenant.domain}", password

    def close(self) -> None:
        for dn in self.dns:
            self.admin.delete(dn)
        self.admin.unbind()


@pytest.fixture
def disposable(stack: StackLike) -> Iterator[Disposable]:
    users = Disposable(stack)
    try:
        yield users
    finally:
        users.close()


# --- every seeded state ---------------------------------------------------------------

STATE_STATUS = {
    UserState.ACTIVE: Status.SUCCESS,
    UserState.PASSWORD_EXPIRED: Status.PASSWORD_EXPIRED,
    UserState.MUST_CHANGE_PASSWORD: Status.MUST_CHANGE_PASSWORD,
    UserState.ACCOUNT_LOCKED: Status.ACCOUNT_LOCKED,
    UserState.ACCOUNT_DISABLED: Status.ACCOUNT_DISABLED,
}


@pytest.mark.parametrize("state", list(UserState))
async def test_seeded_state_maps_to_its_status(
    stack: StackLike, contoso: LdapDirectory, fabrikam: LdapDirectory, state: UserState
) -> None:
    for directory, tenant in ((contoso, stack.demo.tenants[0]), (fabrikam, stack.demo.tenants[1])):
        username, password = _user(tenant, state)
        verdict = await directory.validate(username, password)
        assert verdict.status is STATE_STATUS[state], (username, verdict)


async def test_wrong_password_is_invalid_credentials(
    contoso: LdapDirectory, disposable: Disposable
) -> None:
    username, password = disposable.add()
    assert await contoso.validate(username, password + "x") == Verdict(
        Status.INVALID_CREDENTIALS, REJECTED_DETAIL
    )
    assert (await contoso.validate(username, password)).status is Status.SUCCESS


async def test_unknown_user_looks_like_a_wrong_password(contoso: CountingDirectory) -> None:
    contoso.operations.clear()
    verdict = await contoso.validate(f"nobody-{uuid.uuid4().hex[:8]}@contoso.test", "Pw-x")
    assert verdict == Verdict(Status.INVALID_CREDENTIALS, REJECTED_DETAIL)
    assert contoso.operations == ["search"], "no bind for an entry that does not exist"


async def test_empty_password_is_refused_before_any_ldap_operation(
    stack: StackLike, contoso: CountingDirectory
) -> None:
    username, _ = _user(stack.demo.tenants[0], UserState.ACTIVE)
    contoso.operations.clear()
    before = contoso.stats()
    verdict = await contoso.validate(username, "")
    assert verdict.status is Status.INVALID_CREDENTIALS
    assert contoso.operations == []
    assert contoso.stats() == before


async def test_must_change_password_is_never_success(
    stack: StackLike, contoso: LdapDirectory
) -> None:
    """slapd answers result 0 with changeAfterReset: still not a success."""
    username, password = _user(stack.demo.tenants[0], UserState.MUST_CHANGE_PASSWORD)
    verdict = await contoso.validate(username, password)
    assert verdict.status is Status.MUST_CHANGE_PASSWORD and not verdict.is_success


async def test_a_user_locked_by_failed_binds_is_locked_not_disabled(
    contoso: LdapDirectory, disposable: Disposable
) -> None:
    username, password = disposable.add()
    for _ in range(ldif.MAX_FAILURE):
        assert (await contoso.validate(username, "wrong")).status is Status.INVALID_CREDENTIALS
    verdict = await contoso.validate(username, password)
    assert verdict.status is Status.ACCOUNT_LOCKED


# --- hostile input --------------------------------------------------------------------

HOSTILE_USERNAMES = [
    "*",
    "*@contoso.test",
    ")(uid=*",
    ")(uid=*)@contoso.test",
    "admin)(|(uid=*",
    "admin)(|(uid=*))@contoso.test",
    "alice*@contoso.test",
    "al*ce@contoso.test",
    "alice)(objectClass=*@contoso.test",
    "alice\\2a@contoso.test",
    "alice\\@contoso.test",
    "alice\x00@contoso.test",
    "alice@contoso.test\x00",
    "alice\n@contoso.test",
    " alice@contoso.test",
    "a" * 10_240 + "@contoso.test",
    "ålice@contoso.test",
    "\u0430lice@contoso.test",  # Cyrillic a
    "alice\u200b@contoso.test",  # zero-width space (a format character)
    "alice@fabrikam.test",
    "alice@contoso.test@fabrikam.test",
    "alice@contoso.test.evil",
    "@contoso.test",
    "alice@",
    "alice",
    "",
    "uid=alice,ou=people,dc=contoso,dc=test",
]


@pytest.mark.parametrize("username", HOSTILE_USERNAMES, ids=lambda u: repr(u[:32]))
async def test_hostile_username_is_refused_quietly(
    stack: StackLike, contoso: LdapDirectory, username: str
) -> None:
    """Never success, never an exception; at worst an ordinary refusal."""
    alice_password = _user(stack.demo.tenants[0], UserState.ACTIVE)[1]
    for password in (alice_password, "*"):
        verdict = await contoso.validate(username, password)
        assert verdict.status in (Status.INVALID_USERNAME, Status.INVALID_CREDENTIALS), verdict


@pytest.mark.parametrize(
    "password", ["x" * 10_240, "x" * (MAX_PASSWORD_CHARS + 1), "\udcff", "*", "\x00"]
)
async def test_hostile_password_is_invalid_credentials(
    contoso: LdapDirectory, disposable: Disposable, password: str
) -> None:
    username, _ = disposable.add()
    verdict = await contoso.validate(username, password)
    assert verdict.status is Status.INVALID_CREDENTIALS
    assert password not in verdict.detail


async def test_username_is_escaped_exactly_once(
    contoso: LdapDirectory, disposable: Disposable
) -> None:
    """A uid full of filter metacharacters signs in; the same with a wildcard does not."""
    hexa = uuid.uuid4().hex[:8]
    uid = f"t-{hexa}(x)*\\y"
    username, password = disposable.add(uid=uid)
    assert (await contoso.validate(username, password)).status is Status.SUCCESS
    wildcard = f"t-{hexa}*@contoso.test"
    assert (await contoso.validate(wildcard, password)).status is Status.INVALID_CREDENTIALS


async def test_unicode_password_is_sent_as_its_utf8_bytes(
    contoso: LdapDirectory, disposable: Disposable
) -> None:
    """No SASLprep: NFKC would turn the ligature into "fi" and the bind would fail."""
    password = "Pässwörd-\ufb01-Ω-\u00a0-" + uuid.uuid4().hex[:6]
    username, _ = disposable.add(password=password)
    assert (await contoso.validate(username, password)).status is Status.SUCCESS


async def test_a_username_matching_two_entries_is_invalid_username(
    stack: StackLike, disposable: Disposable
) -> None:
    mail = f"shared-{uuid.uuid4().hex[:8]}@contoso.test"
    _, password = disposable.add(mail=mail)
    disposable.add(mail=mail, password=password)
    async with await LdapDirectory.open(_settings(stack, login_attribute="mail")) as directory:
        verdict = await directory.validate(mail, password)
    assert verdict.status is Status.INVALID_USERNAME
    assert "more than one" in verdict.detail


async def test_mail_as_login_attribute(stack: StackLike) -> None:
    username, password = _user(stack.demo.tenants[0], UserState.ACTIVE)
    async with await LdapDirectory.open(_settings(stack, login_attribute="mail")) as directory:
        assert (await directory.validate(username, password)).status is Status.SUCCESS
        assert (await directory.validate(username.upper(), password)).is_success


# --- tenant isolation -----------------------------------------------------------------


async def test_fabrikam_cannot_validate_contoso_users(
    stack: StackLike, fabrikam: LdapDirectory, disposable: Disposable
) -> None:
    contoso_user, contoso_password = _user(stack.demo.tenants[0], UserState.ACTIVE)
    # A fabrikam agent refuses the other tenant's domain outright.
    verdict = await fabrikam.validate(contoso_user, contoso_password)
    assert verdict.status is Status.INVALID_USERNAME
    # Its service account cannot even open contoso's subtree.
    with pytest.raises(DirectoryMisconfigured, match="base_dn"):
        await LdapDirectory.open(_settings(stack, 1, base_dn=stack.demo.tenants[0].base_dn))
    # Misconfigured with contoso's domain, it still finds no contoso entry: no bind at all.
    only_in_contoso, password = disposable.add()
    async with await CountingDirectory.open(_settings(stack, 1, domain="contoso.test")) as wrong:
        verdict = await wrong.validate(only_in_contoso, password)
        assert verdict.status is Status.INVALID_CREDENTIALS
        assert wrong.operations == ["search"]


# --- concurrency ----------------------------------------------------------------------


async def test_200_validations_across_8_threads_are_all_correct(
    stack: StackLike, contoso: LdapDirectory
) -> None:
    tenant = stack.demo.tenants[0]
    cases: list[tuple[str, str, Status]] = []
    for n in range(1, 161):
        cases.append(
            (f"{tenant.bulk_uid(n)}@{tenant.domain}", tenant.bulk_password, Status.SUCCESS)
        )
    for state in (UserState.MUST_CHANGE_PASSWORD, UserState.ACCOUNT_LOCKED):
        username, password = _user(tenant, state)
        cases += [(username, password, STATE_STATUS[state])] * 10
    cases += [(f"ghost{n}@contoso.test", "Pw-x", Status.INVALID_CREDENTIALS) for n in range(10)]
    cases += [(f"x{n}@fabrikam.test", "Pw-x", Status.INVALID_USERNAME) for n in range(10)]
    assert len(cases) == 200
    started = time.perf_counter()
    verdicts = await asyncio.gather(*(contoso.validate(u, p) for u, p, _ in cases))
    elapsed = time.perf_counter() - started
    assert [v.status for v in verdicts] == [expected for _, _, expected in cases]
    assert elapsed < 20, f"200 validations took {elapsed:.1f} s"


# --- opening, TLS, failures -----------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port  # closed again when the with-block ends


async def test_directory_down_fails_at_open_naming_the_url(stack: StackLike) -> None:
    url = f"ldap://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    with pytest.raises(DirectoryUnavailable, match=r"url ldap://127\.0\.0\.1:\d+: cannot connect"):
        await LdapDirectory.open(_settings(stack, url=url))
    assert time.monotonic() - started < 5


async def test_wrong_service_password_fails_at_open(stack: StackLike) -> None:
    with pytest.raises(ServiceAccountRefused, match="bind_dn and bind_password") as caught:
        await LdapDirectory.open(_settings(stack, bind_password="not-the-password"))
    assert "not-the-password" not in str(caught.value)


@pytest.mark.parametrize(
    ("overrides", "setting"),
    [
        ({"url": "http://127.0.0.1:389"}, "url"),
        ({"url": "ldap://"}, "url"),
        ({"url": "ldap://127.0.0.1:99999"}, "url"),
        ({"bind_password": ""}, "bind_password"),
        ({"bind_dn": " "}, "bind_dn"),
        ({"base_dn": ""}, "base_dn"),
        ({"domain": "@contoso.test"}, "domain"),
        ({"login_attribute": "cn"}, "login_attribute"),
        ({"user_object_class": "x)(uid=*"}, "user_object_class"),
        ({"ca_file": Path("/nonexistent/ca.pem")}, "ca_file"),
        ({"start_tls": True, "url": "ldaps://127.0.0.1:636"}, "start_tls"),
        ({"timeout_s": 0.0}, "timeout_s"),
        ({"timeout_s": float("nan")}, "timeout_s"),
        ({"pool_size": 0}, "pool_size"),
        ({"kind": "novell"}, "kind"),
    ],
)
async def test_bad_settings_fail_at_open_naming_the_setting(
    stack: StackLike, overrides: dict[str, Any], setting: str
) -> None:
    with pytest.raises(DirectoryMisconfigured, match=rf"\b{setting}:"):
        await LdapDirectory.open(_settings(stack, **overrides))


async def test_settings_repr_hides_the_service_password(stack: StackLike) -> None:
    settings = _settings(stack)
    assert settings.bind_password not in repr(settings)


async def test_ldaps_with_the_stack_certificate(stack: StackLike) -> None:
    settings = _settings(stack, url=stack.slapd.ldaps_url, ca_file=stack.slapd.tls_cert_path)
    username, password = _user(stack.demo.tenants[0], UserState.ACTIVE)
    async with await LdapDirectory.open(settings) as directory:
        assert (await directory.validate(username, password)).status is Status.SUCCESS


async def test_ldaps_without_the_right_ca_fails_at_open(stack: StackLike) -> None:
    with pytest.raises(DirectoryUnavailable, match=r"TLS failed.*ca_file"):
        await LdapDirectory.open(_settings(stack, url=stack.slapd.ldaps_url))


async def test_start_tls_with_the_stack_certificate(stack: StackLike) -> None:
    settings = _settings(stack, start_tls=True, ca_file=stack.slapd.tls_cert_path)
    username, password = _user(stack.demo.tenants[0], UserState.ACTIVE)
    async with await LdapDirectory.open(settings) as directory:
        assert (await directory.validate(username, password)).status is Status.SUCCESS


async def test_ldapi_socket(stack: StackLike) -> None:
    username, password = _user(stack.demo.tenants[0], UserState.ACTIVE)
    async with await LdapDirectory.open(_settings(stack, url=stack.slapd.ldapi_url)) as directory:
        assert (await directory.validate(username, password)).status is Status.SUCCESS


async def test_validate_after_close_raises(stack: StackLike) -> None:
    directory = await LdapDirectory.open(_settings(stack))
    await directory.aclose()
    await directory.aclose()  # idempotent
    with pytest.raises(Exception, match="aclose"):
        await directory.validate("alice@contoso.test", "x")


# --- broken connections: reconnect once, time out cleanly -----------------------------


class Proxy:
    """A TCP proxy to slapd that can cut every connection or stop answering."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.is_stalled = False
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self.writers += [writer, up_writer]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, back: bool) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    if back and self.is_stalled:
                        continue  # swallow the answer: the client must time out
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(
            pump(reader, up_writer, back=False), pump(up_reader, writer, back=True)
        )

    def cut(self) -> None:
        """Close every proxied connection, as a server's idle timeout would."""
        for writer in self.writers:
            writer.close()
        self.writers.clear()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        self.cut()
        await self.server.wait_closed()


@pytest_asyncio.fixture
async def proxy(stack: StackLike) -> AsyncIterator[tuple[Proxy, str]]:
    port = int(stack.ldap_url.rsplit(":", 1)[1])
    p = Proxy(port)
    listen = await p.start()
    try:
        yield p, f"ldap://127.0.0.1:{listen}"
    finally:
        with contextlib.suppress(Exception):
            await p.stop()


async def test_cut_connections_are_reopened_once(
    stack: StackLike, proxy: tuple[Proxy, str]
) -> None:
    p, url = proxy
    username, password = _user(stack.demo.tenants[0], UserState.ACTIVE)
    async with await LdapDirectory.open(_settings(stack, url=url, pool_size=1)) as directory:
        assert (await directory.validate(username, password)).is_success
        p.cut()
        await asyncio.sleep(0.05)  # let the close reach the client's sockets
        assert (await directory.validate(username, password)).is_success
        assert directory.stats()["reconnects"] >= 1
        await p.stop()  # now nothing listens: one retry, then unavailable
        with pytest.raises(DirectoryUnavailable, match="url ldap://"):
            await directory.validate(username, password)


async def test_a_silent_directory_times_out(stack: StackLike, proxy: tuple[Proxy, str]) -> None:
    p, url = proxy
    username, password = _user(stack.demo.tenants[0], UserState.ACTIVE)
    settings = _settings(stack, url=url, timeout_s=0.5, pool_size=1)
    async with await LdapDirectory.open(settings) as directory:
        assert (await directory.validate(username, password)).is_success
        p.is_stalled = True
        started = time.monotonic()
        with pytest.raises(DirectoryTimeout):
            await directory.validate(username, password)
        assert time.monotonic() - started < 3
        p.is_stalled = False
        # The timed-out connection was discarded: the next request works on a new one.
        assert (await directory.validate(username, password)).is_success


# --- the Directory contract, for the fake and the real adapter ------------------------


def _fake_for(tenant: DemoTenant) -> FakeDirectory:
    return FakeDirectory(
        users={u.username: (u.password, STATE_STATUS[u.state]) for u in tenant.users}
    )


@pytest_asyncio.fixture(params=["fake", "ldap"])
async def any_directory(
    request: pytest.FixtureRequest, stack: StackLike
) -> AsyncIterator[Directory]:
    if request.param == "fake":
        directory: Directory = _fake_for(stack.demo.tenants[0])
    else:
        directory = await LdapDirectory.open(_settings(stack))
    try:
        yield directory
    finally:
        await directory.aclose()


async def test_contract_states(stack: StackLike, any_directory: Directory) -> None:
    for user in stack.demo.tenants[0].users:
        verdict = await any_directory.validate(user.username, user.password)
        assert verdict.status is STATE_STATUS[user.state]


async def test_contract_refusals(stack: StackLike, any_directory: Directory) -> None:
    username, password = _user(stack.demo.tenants[0], UserState.ACTIVE)
    empty = await any_directory.validate(username, "")
    assert empty.status is Status.INVALID_CREDENTIALS
    unknown = await any_directory.validate("nobody@contoso.test", password)
    assert unknown == Verdict(Status.INVALID_CREDENTIALS, REJECTED_DETAIL)


async def test_test_logon_explains_the_result(stack: StackLike, contoso: LdapDirectory) -> None:
    username, password = _user(stack.demo.tenants[0], UserState.ACCOUNT_DISABLED)
    result = await logon.timed_logon(contoso, username, password)
    text = logon.format_result(result)
    assert "account_disabled" in text and "Enable the account" in text
    assert password not in text
    assert logon.exit_code(result.verdict) == 1
    down = FakeDirectory(error=DirectoryUnavailable("(url ldap://dc1: cannot connect)"))
    verdict = await logon.test_logon(down, username, password)
    assert verdict.status is Status.DIRECTORY_UNAVAILABLE
    assert logon.exit_code(verdict) == 2


# --- the DN cache -----------------------------------------------------------------------


def _failure_times(stack: StackLike, dn: str) -> int:
    """How many failed binds slapd has counted for this entry (pwdFailureTime values)."""
    conn = ldap3.Connection(
        ldap3.Server(stack.ldap_url, get_info=ldap3.NONE),
        stack.demo.ldap_admin_dn,
        stack.demo.ldap_admin_password,
        auto_bind=True,
    )
    try:
        conn.search(dn, "(objectClass=*)", search_scope=ldap3.BASE, attributes=["pwdFailureTime"])
        return len(conn.entries[0]["pwdFailureTime"].values) if conn.entries else 0
    finally:
        conn.unbind()


async def test_a_second_sign_in_skips_the_search(stack: StackLike, disposable: Disposable) -> None:
    username, password = disposable.add()
    async with await LdapDirectory.open(_settings(stack)) as directory:
        assert (await directory.validate(username, password)).status is Status.SUCCESS
        searches = directory.stats().get("searches", 0)
        assert (await directory.validate(username, password)).status is Status.SUCCESS
        assert directory.stats().get("searches", 0) == searches  # the DN came from the cache
        assert directory.stats()["dn_cache_hits"] >= 1


async def test_a_wrong_password_through_a_cached_dn_counts_once(
    stack: StackLike, disposable: Disposable
) -> None:
    username, password = disposable.add()
    dn = ldif.user_dn(stack.demo.tenants[0], username.split("@")[0])
    async with await LdapDirectory.open(_settings(stack)) as directory:
        assert (await directory.validate(username, password)).status is Status.SUCCESS
        for expected in (1, 2):
            verdict = await directory.validate(username, "wrong-password")
            assert verdict.status is Status.INVALID_CREDENTIALS
            assert await asyncio.to_thread(_failure_times, stack, dn) == expected


async def test_a_renamed_entry_is_found_again(stack: StackLike, disposable: Disposable) -> None:
    """The cached DN went stale (entry moved): the adapter searches again and binds there."""
    username, password = disposable.add()
    tenant = stack.demo.tenants[0]
    uid = username.split("@")[0]
    async with await LdapDirectory.open(_settings(stack)) as directory:
        assert (await directory.validate(username, password)).status is Status.SUCCESS
        old_dn = ldif.user_dn(tenant, uid)
        # Same uid, new RDN (cn=...): the login name now lives at another DN.
        # Keep the uid value (deleteoldrdn false): only the DN changes.
        moved = disposable.admin.modify_dn(old_dn, f"cn={uid}", delete_old_dn=False)
        assert moved, disposable.admin.result
        disposable.dns.remove(old_dn)
        disposable.dns.append(f"cn={uid},{tenant.people_dn}")
        assert (await directory.validate(username, password)).status is Status.SUCCESS
        assert (await directory.validate(username, "wrong")).status is Status.INVALID_CREDENTIALS


async def test_the_cache_can_be_turned_off(stack: StackLike, disposable: Disposable) -> None:
    username, password = disposable.add()
    async with await LdapDirectory.open(_settings(stack, dn_cache_ttl_s=0)) as directory:
        for _ in range(2):
            assert (await directory.validate(username, password)).status is Status.SUCCESS
        assert directory.stats().get("dn_cache_hits", 0) == 0
        assert directory.stats()["searches"] == 2


async def test_no_bind_starts_too_close_to_the_deadline(
    stack: StackLike, disposable: Disposable
) -> None:
    """Issue 8 finding 10: a bind that cannot finish before the request's deadline is not
    started, so slapd never counts a failure nobody sees the answer of."""
    username, password = disposable.add()
    dn = ldif.user_dn(stack.demo.tenants[0], username.split("@")[0])
    async with await LdapDirectory.open(_settings(stack)) as directory:

        async def too_late() -> None:
            late = time.time() + BIND_MARGIN_S / 2
            verdict = await directory.validate(username, "wrong-password", deadline=late)
            assert verdict.status is Status.DIRECTORY_TIMEOUT, verdict

        await too_late()  # found by a search
        assert directory.stats().get("user_binds", 0) == 0
        ample = time.time() + 10
        verdict = await directory.validate(username, password, deadline=ample)
        assert verdict.status is Status.SUCCESS
        await too_late()  # through the cached DN
        assert directory.stats()["user_binds"] == 1
        assert await asyncio.to_thread(_failure_times, stack, dn) == 0
        # With time enough, the same wrong password is bound and counted.
        verdict = await directory.validate(username, "wrong-password", deadline=ample)
        assert verdict.status is Status.INVALID_CREDENTIALS
        assert await asyncio.to_thread(_failure_times, stack, dn) == 1
