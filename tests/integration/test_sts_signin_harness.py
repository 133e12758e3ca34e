"""The sign-in harness (tests.support.signin_harness): a throwaway tenant's agents answer."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.wire import Status
from infra.stack import Stack
from tests.support.signin_harness import *  # noqa: F403 -- the old import path, until callers move
from tests.support.signin_harness import consuming, create_tenant, delete_queue, signin_sts
from tests.support.sts_harness import private_database

pytestmark = pytest.mark.stack


async def test_throwaway_tenant_agents_answer_through_the_sts(stack: Stack, tmp_path: Path) -> None:
    async with private_database(stack) as dsn:
        tenant = await create_tenant(dsn, agents=1, users={"ann": ("Pw-1", Status.SUCCESS)})
        try:
            async with (
                signin_sts(stack, tmp_path, dsn) as sts,
                consuming(stack, tenant) as running,
            ):
                status, body = await sts.sign_in(tenant, tenant.username("ann"), "Pw-1")
                assert status == 200, body
                assert running.handlers[0].counts["success"] == 1
                assert sts.dispatcher.counters["replied"] == 1
        finally:
            await delete_queue(stack, tenant.id)
