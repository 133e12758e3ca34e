"""Resolving `/{tenant}`: GUID or verified domain, cached briefly (sts.tenants)."""

from __future__ import annotations

import uuid
from typing import cast

import pytest

from sts.errors import TenantNotFound
from sts.queries import Database, TenantRow
from sts.tenants import TenantDirectory, parse_segment

TENANT = TenantRow(uuid.UUID("11111111-1111-4111-8111-111111111111"), "Contoso", False)


class FakeDatabase:
    def __init__(self) -> None:
        self.calls: list[object] = []

    async def tenant_by_id(self, tenant_id: uuid.UUID) -> TenantRow | None:
        self.calls.append(tenant_id)
        return TENANT if tenant_id == TENANT.id else None

    async def tenant_by_domain(self, domain: str) -> TenantRow | None:
        self.calls.append(domain)
        return TENANT if domain == "contoso.test" else None


@pytest.mark.parametrize(
    ("segment", "expected"),
    [
        (str(TENANT.id), TENANT.id),
        (str(TENANT.id).upper(), TENANT.id),
        ("Contoso.TEST", "contoso.test"),
        ("sub.contoso.test", "sub.contoso.test"),
        ("common", None),  # multi-tenant aliases are not supported here
        ("contoso", None),
        ("-bad.test", None),
        ("a..b", None),
        ("x" * 300 + ".test", None),
        ("contoso.test%00", None),
        ("11111111-1111-4111-8111-11111111111g", None),
    ],
)
def test_parse_segment(segment: str, expected: object) -> None:
    assert parse_segment(segment) == expected


async def test_resolves_by_guid_and_domain_and_caches_hits_and_misses() -> None:
    db = FakeDatabase()
    tenants = TenantDirectory(cast(Database, db), ttl_s=60)
    by_domain = await tenants.resolve("CONTOSO.test")
    by_id = await tenants.resolve(str(TENANT.id))
    assert by_domain == by_id
    assert (by_id.id, by_id.name) == (str(TENANT.id), "Contoso")
    await tenants.resolve("contoso.test")  # cached, case-insensitively
    for _ in range(2):
        with pytest.raises(TenantNotFound):
            await tenants.resolve("fabrikam.test")
    assert db.calls == ["contoso.test", TENANT.id, "fabrikam.test"]


async def test_malformed_segments_never_reach_the_database() -> None:
    db = FakeDatabase()
    tenants = TenantDirectory(cast(Database, db), ttl_s=60)
    with pytest.raises(TenantNotFound) as caught:
        await tenants.resolve("not a tenant")
    assert caught.value.code == 90002
    assert db.calls == []


async def test_zero_ttl_disables_the_cache() -> None:
    db = FakeDatabase()
    tenants = TenantDirectory(cast(Database, db), ttl_s=0)
    await tenants.resolve("contoso.test")
    await tenants.resolve("contoso.test")
    assert len(db.calls) == 2
