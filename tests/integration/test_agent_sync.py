"""agent.sync.UserSource against the stack's real slapd: the paged read as each tenant's
service account, the mapping of real entries, and the failures that must stop a sync
before anything is sent. (The CA side and ``pta-agent sync`` are in test_ca_sync.py.)"""

from __future__ import annotations

import uuid
from dataclasses import replace

import ldap3
import pytest

from agent.directory import DirectoryMisconfigured, DirectoryUnavailable
from agent.ldap_directory import LdapDirectorySettings, ServiceAccountRefused
from agent.sync import UserSource
from infra.demo import DemoTenant
from infra.stack import Stack
from tests.support.stack_agents import directory_settings

pytestmark = [
    pytest.mark.stack,
    pytest.mark.filterwarnings("ignore:ssl.match_hostname:DeprecationWarning"),
]


def _entry_uuids(stack: Stack, tenant: DemoTenant) -> dict[str, str]:
    """uid -> entryUUID as the directory's root sees them (the ground truth)."""
    server = ldap3.Server(stack.ldap_url, get_info=ldap3.NONE)
    with ldap3.Connection(
        server, stack.demo.ldap_admin_dn, stack.demo.ldap_admin_password, auto_bind=True
    ) as conn:
        entries = conn.extend.standard.paged_search(
            tenant.people_dn, "(uid=*)", attributes=["uid", "entryUUID"], paged_size=500,
            generator=False,
        )  # fmt: skip
        return {
            e["raw_attributes"]["uid"][0].decode(): e["raw_attributes"]["entryUUID"][0].decode()
            for e in entries
            if e.get("type") == "searchResEntry"
        }


@pytest.mark.parametrize("tenant_index", [0, 1])
async def test_every_user_of_the_tenant_is_read(stack: Stack, tenant_index: int) -> None:
    tenant = stack.demo.tenants[tenant_index]
    result = await UserSource(directory_settings(stack, tenant), page_size=100).read()
    truth = _entry_uuids(stack, tenant)
    # More than one page; every entry of the subtree and nothing of the other tenant.
    assert result.entries == len(truth) >= tenant.bulk_count + len(tenant.users)
    assert result.skipped == {}
    assert {u.username for u in result.users} == {f"{uid}@{tenant.domain}" for uid in truth}
    by_name = {u.username: u for u in result.users}
    for user in tenant.users:
        synced = by_name[user.username]
        assert synced.immutable_id == truth[user.uid].lower()
        assert str(uuid.UUID(synced.immutable_id)) == synced.immutable_id
        assert synced.display_name == user.display_name
    bulk = by_name[f"{tenant.bulk_uid(7)}@{tenant.domain}"]
    assert bulk.display_name == f"Bulk {tenant.bulk_uid(7)}"


async def test_mail_as_login_attribute(stack: Stack) -> None:
    tenant = stack.demo.tenants[0]
    settings = replace(directory_settings(stack, tenant), login_attribute="mail")
    result = await UserSource(settings).read()
    assert f"alice@{tenant.domain}" in {u.username for u in result.users}
    assert len(result.users) == result.entries


async def test_a_domain_other_than_the_users_skips_them_all(stack: Stack) -> None:
    tenant = stack.demo.tenants[0]
    settings = replace(
        directory_settings(stack, tenant), login_attribute="mail", domain="fabrikam.test"
    )
    result = await UserSource(settings).read()
    assert result.users == () and result.skipped == {"other_domain": result.entries}


@pytest.mark.parametrize(
    ("change", "error", "text"),
    [
        ({"base_dn": "ou=nobody,dc=contoso,dc=test"}, DirectoryMisconfigured, "base_dn"),
        ({"bind_password": "wrong-service-password"}, ServiceAccountRefused, "pta-reader"),
        ({"url": "ldap://127.0.0.1:1"}, DirectoryUnavailable, "cannot connect"),
    ],
)
async def test_a_read_that_cannot_complete_raises(
    stack: Stack, change: dict[str, str], error: type[Exception], text: str
) -> None:
    settings: LdapDirectorySettings = replace(
        directory_settings(stack, stack.demo.tenants[0]), **change
    )
    with pytest.raises(error) as caught:
        await UserSource(settings).read()
    assert text in str(caught.value)
    assert "wrong-service-password" not in str(caught.value)


async def test_another_tenants_subtree_is_not_readable(stack: Stack) -> None:
    contoso, fabrikam = stack.demo.tenants
    settings = replace(directory_settings(stack, fabrikam), base_dn=contoso.people_dn)
    with pytest.raises(DirectoryMisconfigured):  # the ACL hides it: noSuchObject
        await UserSource(settings).read()


async def test_ldaps_with_the_stack_certificate(stack: Stack) -> None:
    tenant = stack.demo.tenants[0]
    settings = replace(
        directory_settings(stack, tenant),
        url=stack.slapd.ldaps_url,
        ca_file=stack.slapd.tls_cert_path,
    )
    result = await UserSource(settings).read()
    assert len(result.users) == result.entries > 1000
