"""The private slapd answers binds the way the agent relies on (infra.slapd, infra.ldif).

Every seeded user state is checked with a real bind carrying the password policy request
control; lockout and wrong-password cases use disposable users that the rootdn adds (with
unique names), so that the seeded users never collect failed binds (five of them within
15 minutes would lock a seeded user out for every later test).
"""

from __future__ import annotations

import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import ldap3
import pytest

from common.ppolicy import (
    PERMANENT_LOCK_TIME,
    PpolicyError,
    PpolicyResponse,
    request_control,
    response_from_result,
)
from infra import ldif
from infra.demo import Demo, DemoTenant, DemoUser, UserState, generate
from infra.server import Layout, Ports, ServerNotReady
from infra.slapd import Slapd

pytestmark = pytest.mark.stack

INVALID_CREDENTIALS = 49


class StackLike(Protocol):
    """What these tests use of the session's stack fixture."""

    layout: Layout
    demo: Demo

    @property
    def ldap_url(self) -> str: ...


def _server(url: str) -> ldap3.Server:
    # get_info=NONE: by default ldap3 re-reads the root DSE and the 90 KB subschema after
    # every bind, which makes a bind ~8 ms instead of ~0.3 ms.
    return ldap3.Server(url, get_info=ldap3.NONE, connect_timeout=5)


def _bind(url: str, dn: str, password: str) -> tuple[int, PpolicyResponse | None]:
    """A simple bind with the ppolicy request control: (result code, decoded control)."""
    conn = ldap3.Connection(_server(url), user=dn, password=password, receive_timeout=10)
    try:
        conn.bind(controls=[request_control()])
        return conn.result["result"], response_from_result(conn.result)
    finally:
        conn.unbind()


def _connect(url: str, dn: str | None = None, password: str | None = None) -> ldap3.Connection:
    return ldap3.Connection(
        _server(url), user=dn, password=password, auto_bind=True, receive_timeout=10
    )


def _user(tenant: DemoTenant, state: UserState) -> DemoUser:
    return next(u for u in tenant.users if u.state is state)


def _read(conn: ldap3.Connection, dn: str, attributes: list[str]) -> dict[str, list[str]]:
    """Attributes of one entry as the server sent them ({} when the connection may not)."""
    conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=attributes)
    if not conn.entries:
        return {}
    raw = conn.response[0]["raw_attributes"]
    return {k: [v.decode() for v in vals] for k, vals in raw.items() if vals}


def _raw(conn: ldap3.Connection, dn: str, attribute: str) -> list[str]:
    """One attribute's values as the server sent them (ldap3 would parse timestamps)."""
    conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=[attribute])
    if not conn.response:
        return []
    return [v.decode() for v in conn.response[0]["raw_attributes"].get(attribute, [])]


@pytest.fixture
def disposable(stack: StackLike) -> Iterator[tuple[str, str]]:
    """A fresh active user in contoso's people OU: (dn, password); deleted afterwards."""
    tenant = stack.demo.tenants[0]
    uid = f"t-{uuid.uuid4().hex[:12]}"
    dn = ldif.user_dn(tenant, uid)
    password = f"Pw-{uuid.uuid4().hex}"
    admin = _connect(stack.ldap_url, stack.demo.ldap_admin_dn, stack.demo.ldap_admin_password)
    # A cleartext password on add: olcPPolicyHashCleartext hashes it and the overlay sets
    # pwdChangedTime (an add by the rootdn does not set pwdReset; a later modify would).
    assert admin.add(
        dn, ["inetOrgPerson"], {"uid": uid, "cn": uid, "sn": uid, "userPassword": password}
    ), admin.result
    try:
        yield dn, password
    finally:
        admin.delete(dn)
        admin.unbind()


EXPECTED: dict[UserState, tuple[int, PpolicyError | None]] = {
    UserState.ACTIVE: (0, None),
    UserState.PASSWORD_EXPIRED: (INVALID_CREDENTIALS, PpolicyError.PASSWORD_EXPIRED),
    # Bind succeeds but the session may only change its password.
    UserState.MUST_CHANGE_PASSWORD: (0, PpolicyError.CHANGE_AFTER_RESET),
    UserState.ACCOUNT_LOCKED: (INVALID_CREDENTIALS, PpolicyError.ACCOUNT_LOCKED),
    UserState.ACCOUNT_DISABLED: (INVALID_CREDENTIALS, PpolicyError.ACCOUNT_LOCKED),
}


@pytest.mark.parametrize("tenant_index", [0, 1])
@pytest.mark.parametrize("state", list(UserState))
def test_seeded_state_binds_as_ppolicy_says(
    stack: StackLike, tenant_index: int, state: UserState
) -> None:
    tenant = stack.demo.tenants[tenant_index]
    user = _user(tenant, state)
    code, control = _bind(stack.ldap_url, ldif.user_dn(tenant, user.uid), user.password)
    assert control is not None, "slapd sends the response control on every bind"
    assert (code, control.error) == EXPECTED[state]


def test_locked_and_disabled_differ_in_pwd_account_locked_time(stack: StackLike) -> None:
    tenant = stack.demo.tenants[0]
    reader = _connect(stack.ldap_url, tenant.service_dn, tenant.service_password)
    disabled = _user(tenant, UserState.ACCOUNT_DISABLED)
    assert _raw(reader, ldif.user_dn(tenant, disabled.uid), "pwdAccountLockedTime") == [
        PERMANENT_LOCK_TIME
    ]
    locked = _user(tenant, UserState.ACCOUNT_LOCKED)
    [value] = _raw(reader, ldif.user_dn(tenant, locked.uid), "pwdAccountLockedTime")
    # A real timestamp, as a failure lockout writes it, in the past.
    assert datetime.strptime(value, "%Y%m%d%H%M%SZ").replace(tzinfo=UTC) <= datetime.now(UTC)
    reader.unbind()


def test_wrong_password_is_49_without_a_reason(
    stack: StackLike, disposable: tuple[str, str]
) -> None:
    dn, _ = disposable
    code, control = _bind(stack.ldap_url, dn, "not-the-password")
    assert code == INVALID_CREDENTIALS
    assert control is not None and control.error is None


def test_five_failures_lock_the_account(stack: StackLike, disposable: tuple[str, str]) -> None:
    dn, password = disposable
    for _ in range(ldif.MAX_FAILURE):
        assert _bind(stack.ldap_url, dn, "not-the-password")[0] == INVALID_CREDENTIALS
    code, control = _bind(stack.ldap_url, dn, password)
    assert code == INVALID_CREDENTIALS
    assert control is not None and control.error is PpolicyError.ACCOUNT_LOCKED
    tenant = stack.demo.tenants[0]
    reader = _connect(stack.ldap_url, tenant.service_dn, tenant.service_password)
    [value] = _raw(reader, dn, "pwdAccountLockedTime")
    assert value != PERMANENT_LOCK_TIME, "a failure lockout is told apart from disabled"
    reader.unbind()


def test_user_changes_own_password(stack: StackLike, disposable: tuple[str, str]) -> None:
    dn, password = disposable
    conn = _connect(stack.ldap_url, dn, password)
    new_password = f"Pw-{uuid.uuid4().hex}"
    assert conn.extend.standard.modify_password(dn, password, new_password), conn.result
    conn.unbind()
    assert _bind(stack.ldap_url, dn, new_password)[0] == 0
    assert _bind(stack.ldap_url, dn, password)[0] == INVALID_CREDENTIALS
    # The user may not read its own entry, let alone anyone else's.
    conn = _connect(stack.ldap_url, dn, new_password)
    assert _read(conn, dn, ["*"]) == {}
    conn.unbind()


def test_reader_sees_ppolicy_attributes_of_its_tenant(stack: StackLike) -> None:
    tenant = stack.demo.tenants[0]
    reader = _connect(stack.ldap_url, tenant.service_dn, tenant.service_password)
    maya = _user(tenant, UserState.MUST_CHANGE_PASSWORD)
    attrs = _read(reader, ldif.user_dn(tenant, maya.uid), ["mail", "pwdChangedTime", "pwdReset"])
    assert attrs["mail"] == [f"{maya.uid}@{tenant.domain}"]
    assert attrs["pwdReset"] == ["TRUE"]
    assert attrs["pwdChangedTime"]
    reader.unbind()


def test_reader_never_reads_user_password(stack: StackLike) -> None:
    tenant = stack.demo.tenants[0]
    reader = _connect(stack.ldap_url, tenant.service_dn, tenant.service_password)
    alice = _user(tenant, UserState.ACTIVE)
    reader.search(ldif.user_dn(tenant, alice.uid), "(objectClass=*)", ldap3.BASE, attributes=["*"])
    assert "userPassword" not in reader.response[0]["raw_attributes"]
    reader.search(ldif.user_dn(tenant, alice.uid), "(objectClass=*)", attributes=["userPassword"])
    assert reader.response[0]["raw_attributes"]["userPassword"] == []
    # Nor may it probe it with a filter.
    reader.search(tenant.people_dn, "(userPassword=*)")
    assert reader.entries == []
    reader.unbind()


def test_reader_cannot_see_the_other_tenant(stack: StackLike) -> None:
    contoso, fabrikam = stack.demo.tenants[0], stack.demo.tenants[1]
    reader = _connect(stack.ldap_url, contoso.service_dn, contoso.service_password)
    assert not reader.search(fabrikam.base_dn, "(objectClass=*)")
    assert reader.entries == []
    alice = _user(fabrikam, UserState.ACTIVE)
    assert _read(reader, ldif.user_dn(fabrikam, alice.uid), ["*", "+"]) == {}
    # Nor the shared root, and a subtree search from it finds nothing of either tenant.
    assert not reader.search(ldif.SUFFIX, "(uid=alice)")
    assert reader.entries == []
    reader.unbind()


def test_reader_lists_its_whole_tenant(stack: StackLike) -> None:
    """Past the default 500-entry size limit (a directory sync reads every user)."""
    tenant = stack.demo.tenants[0]
    reader = _connect(stack.ldap_url, tenant.service_dn, tenant.service_password)
    entries = list(
        reader.extend.standard.paged_search(
            tenant.people_dn, "(objectClass=inetOrgPerson)", attributes=["uid"], paged_size=500
        )
    )
    # Other tests may add disposable users meanwhile: every seeded one must be there.
    expected = {tenant.bulk_uid(n) for n in range(1, tenant.bulk_count + 1)}
    expected |= {u.uid for u in tenant.users}
    assert expected <= {e["raw_attributes"]["uid"][0].decode() for e in entries}
    reader.unbind()


def test_anonymous_sees_nothing(stack: StackLike) -> None:
    anonymous = _connect(stack.ldap_url)
    tenant = stack.demo.tenants[0]
    for base in (ldif.SUFFIX, tenant.base_dn, tenant.people_dn, ldif.POLICIES_DN):
        anonymous.search(base, "(objectClass=*)", attributes=["*", "+"])
        assert anonymous.entries == [], base
    anonymous.unbind()


def test_bulk_users_bind(stack: StackLike) -> None:
    for tenant in stack.demo.tenants:
        for n in (1, tenant.bulk_count):
            dn = ldif.user_dn(tenant, tenant.bulk_uid(n))
            code, control = _bind(stack.ldap_url, dn, tenant.bulk_password)
            assert code == 0 and control is not None and control.error is None
    assert stack.demo.tenants[0].bulk_uid(1) == "user0001"


def test_ldaps_with_the_stack_certificate(stack: StackLike) -> None:
    slapd = Slapd(stack.layout, stack.demo)
    assert slapd.tls_key_path.stat().st_mode & 0o777 == 0o600
    tls = ldap3.Tls(ca_certs_file=str(slapd.tls_cert_path), validate=ssl.CERT_REQUIRED)
    server = ldap3.Server(slapd.ldaps_url, use_ssl=True, tls=tls)
    tenant = stack.demo.tenants[1]
    conn = ldap3.Connection(server, user=tenant.service_dn, password=tenant.service_password)
    assert conn.bind(), conn.result
    conn.unbind()


async def test_health_and_configure(stack: StackLike) -> None:
    slapd = Slapd(stack.layout, stack.demo)
    await slapd.configure()  # idempotent checks only
    health = await slapd.health()
    assert health.is_healthy, health.detail
    assert health.endpoint == stack.ldap_url


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_wait_ready_names_the_log_when_nothing_listens(tmp_path: Path) -> None:
    ports = Ports.from_base(_free_port() - 15)  # only ports.ldap is dialled
    slapd = Slapd(Layout(tmp_path, ports), generate())
    started = time.monotonic()
    with pytest.raises(ServerNotReady, match=r"slapd\.log"):
        await slapd.wait_ready(0.3)
    assert time.monotonic() - started < 3
    health = await slapd.health()
    assert not health.is_healthy and health.detail


def test_seed_ldif_is_fast_and_hashes_every_password() -> None:
    demo = generate()
    started = time.perf_counter()
    text = ldif.data_ldif(demo, datetime.now(UTC))
    assert time.perf_counter() - started < 0.5
    secrets = [demo.ldap_admin_password] + [
        s for t in demo.tenants for s in (t.service_password, t.bulk_password)
    ]
    secrets += [u.password for t in demo.tenants for u in t.users]
    assert not any(secret in text for secret in secrets)
    users = sum(t.bulk_count + len(t.users) for t in demo.tenants)
    assert text.count("objectClass: inetOrgPerson") == users
