"""Clone detection with real agent daemons (ca.lifecycle, agent.cloud instance ids): a
copied state folder run as a second process is detected within one heartbeat interval;
restarts are covered in test_ca_lifecycle.py. Against the stack's real CA, PostgreSQL,
RabbitMQ and slapd.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
import uuid

import asyncpg
import pytest

from infra.stack import Stack
from tests.integration.test_agent_renewal import (  # noqa: F401 - fixtures, used by name
    Agents,
    Tenant,
    _register,
    _until,
    tenant,
)
from tests.integration.test_agent_runner import directory_overrides

pytestmark = pytest.mark.stack

HEARTBEAT_S = 0.3  # the agents' own interval (Agents.start, clone_child)


async def _clone_marked(db: asyncpg.Connection, agent_id: str) -> bool:
    value = await db.fetchval(
        "SELECT suspected_clone_at FROM agents WHERE id = $1", uuid.UUID(agent_id)
    )
    return value is not None


async def _heartbeats(db: asyncpg.Connection, agent_id: str) -> object:
    return await db.fetchval(
        "SELECT last_heartbeat_at FROM agents WHERE id = $1", uuid.UUID(agent_id)
    )


async def test_a_copied_state_folder_run_as_a_second_process_is_a_clone(
    stack: Stack,
    tenant: Tenant,  # noqa: F811 - the fixture imported above
) -> None:
    reg = await _register(stack, tenant, "original")
    agent_id = reg.record.agent_id
    copy = tenant.folder / "copy"
    shutil.copytree(reg.dir.path, copy)
    agents = Agents(stack, tenant)
    db = await asyncpg.connect(stack.postgres_dsn)
    child = None
    try:
        # The original alone, heartbeating, is not a clone (restarts: test_ca_lifecycle).
        agents.start(reg.dir.path)
        first = await _heartbeats(db, agent_id)

        async def beating() -> bool:
            return await _heartbeats(db, agent_id) not in (None, first)

        await _until(beating, 60, "the original agent heartbeating")
        await asyncio.sleep(5 * HEARTBEAT_S)
        assert not await _clone_marked(db, agent_id)

        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.integration.clone_child", str(copy),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        assert child.stdin is not None
        child.stdin.write(json.dumps(directory_overrides(stack)).encode())
        await child.stdin.drain()
        child.stdin.close()
        row = None

        async def copy_bootstrapped() -> bool:
            nonlocal row
            row = await db.fetchrow(
                "SELECT instances::text AS instances FROM agents WHERE id = $1",
                uuid.UUID(agent_id),
            )
            return row is not None and len(json.loads(row["instances"])) >= 2

        await _until(copy_bootstrapped, 60, "the copy using the agent's identity")
        seen_two = time.monotonic()

        async def marked() -> bool:
            return await _clone_marked(db, agent_id)

        await _until(marked, 30, "the clone being detected")
        detected_s = time.monotonic() - seen_two
    finally:
        if child is not None and child.returncode is None:
            child.kill()
            await child.wait()
        await db.close()
        await agents.close()
    print(f"\nclone detected {detected_s:.2f} s after the copy first called the CA")
    # Within one heartbeat interval (plus polling and the CA round trip).
    assert detected_s <= HEARTBEAT_S + 1.0
