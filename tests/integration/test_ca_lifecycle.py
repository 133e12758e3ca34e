"""Agent lifecycle against real PostgreSQL and RabbitMQ (ca.lifecycle; docs/architecture.md
"Agent lifecycle"): state in ``GET /agents``, the inactive-agent sweep, clone detection.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import structlog.testing

from ca.lifecycle import sweep_inactive
from common.contracts import agent_broker_user
from tests.integration.test_ca_harness import (  # noqa: F401 - fixtures, used by name
    Agent,
    CaServer,
    TenantFactory,
    agent_session,
    bearer,
    ca_fixture,
    ca_pki_fixture,
    db_fixture,
    new_tenant_fixture,
    register,
)
from tests.integration.test_ca_renewal import _broker_users

pytestmark = pytest.mark.stack

LIFECYCLE_FIELDS = {
    "state",
    "version",
    "host",
    "last_heartbeat_at",
    "certificate_not_after",
    "renewal",
}


async def _post(ca: CaServer, agent: Agent, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with (
        agent_session(ca, agent.cert_file, agent.key_file) as http,
        http.post(f"{ca.url}{path}", json=body) as resp,
    ):
        return resp.status, await resp.json()


async def _heartbeat(ca: CaServer, agent: Agent, instance_id: str | None) -> tuple[int, Any]:
    body: dict[str, Any] = {"version": "1.0.0", "status": "ok"}
    if instance_id is not None:
        body["instance_id"] = instance_id
    return await _post(ca, agent, "/agents/heartbeat", body)


async def _views(ca: CaServer, tenant: str) -> dict[str, dict[str, Any]]:
    async with ca.http.get(f"{ca.url}/agents", headers=bearer(ca.admin_token(tenant))) as resp:
        assert resp.status == 200
        return {a["agent_id"]: a for a in (await resp.json())["agents"]}


# -- state and inactive agents ------------------------------------------------------------


async def test_agents_carry_the_lifecycle_fields_and_go_inactive_then_active_again(
    ca: CaServer, new_tenant: TenantFactory, tmp_path: Path
) -> None:
    tenant = await new_tenant()
    agent = await register(ca, tenant, tmp_path / "a")
    view = (await _views(ca, tenant))[agent.agent_id]
    assert LIFECYCLE_FIELDS <= view.keys()
    assert view["state"] == "inactive" and view["last_heartbeat_at"] is None  # never reported
    assert view["host"] == "dc1.contoso.test" and view["version"] == "1.0.0"
    assert view["certificate_not_after"] == view["cert_not_after"]
    assert view["renewal"] == "not_due"

    assert (await _heartbeat(ca, agent, "i1"))[0] == 200
    assert (await _views(ca, tenant))[agent.agent_id]["state"] == "active"
    # It misses heartbeats: more than two intervals of silence.
    interval = ca.settings.heartbeat_interval_s
    ca.clock.offset = dt.timedelta(seconds=2 * interval + 1)
    try:
        assert (await _views(ca, tenant))[agent.agent_id]["state"] == "inactive"
        assert (await _heartbeat(ca, agent, "i1"))[0] == 200  # it comes back
        view = (await _views(ca, tenant))[agent.agent_id]
    finally:
        ca.clock.offset = dt.timedelta()
    assert view["state"] == "active"
    assert view["status"] == "active"  # the old field stays


async def test_an_agent_inactive_past_the_threshold_is_deleted(
    ca: CaServer, new_tenant: TenantFactory, db: asyncpg.Connection, tmp_path: Path
) -> None:
    tenant = await new_tenant()
    silent = await register(ca, tenant, tmp_path / "a")
    recent = await register(ca, tenant, tmp_path / "b")
    for agent in (silent, recent):
        assert (await _post(ca, agent, "/agents/bootstrap", {"instance_id": "x"}))[0] == 200
        assert (await _heartbeat(ca, agent, "x"))[0] == 200
    # As if the first had been silent for the threshold (a shared stack: only this agent).
    now = dt.datetime.now(dt.UTC)
    days = ca.settings.inactive_delete_days
    await db.execute(
        "UPDATE agents SET last_heartbeat_at = $2 WHERE id = $1",
        uuid.UUID(silent.agent_id),
        now - dt.timedelta(days=days, seconds=1),
    )
    deleted = await sweep_inactive(ca.app, now)
    assert deleted == [silent.agent_id]
    assert set(await _views(ca, tenant)) == {recent.agent_id}
    reason = await db.fetchval(
        "SELECT reason FROM revocations WHERE issuer = 'pta' AND serial = $1",
        format(silent.certificate.serial_number, "x"),
    )
    assert reason == "agent_inactive"
    users = {u["name"] for u in await _broker_users(ca)}
    assert agent_broker_user(silent.agent_id) not in users
    assert agent_broker_user(recent.agent_id) in users
    status, answer = await _post(ca, silent, "/agents/bootstrap", {})
    assert (status, answer["error"]) == (401, "certificate_revoked")


# -- clone detection --------------------------------------------------------------------------


async def test_a_restart_is_not_a_clone_but_two_live_instances_are(
    ca: CaServer, new_tenant: TenantFactory, tmp_path: Path
) -> None:
    tenant = await new_tenant()
    agent = await register(ca, tenant, tmp_path / "a")
    # A process, then its restart (a new instance id; the old one is never heard again).
    for instance in ("first", "first", "restarted", "restarted"):
        assert (await _heartbeat(ca, agent, instance))[0] == 200
    assert (await _post(ca, agent, "/agents/bootstrap", {"instance_id": "restarted"}))[0] == 200
    assert (await _views(ca, tenant))[agent.agent_id]["state"] == "active"

    # A copy of the state folder starts (bootstrap), the original heartbeats again.
    with structlog.testing.capture_logs() as logs:
        assert (await _post(ca, agent, "/agents/bootstrap", {"instance_id": "copy"}))[0] == 200
        assert (await _heartbeat(ca, agent, "restarted"))[0] == 200
    view = (await _views(ca, tenant))[agent.agent_id]
    assert view["state"] == "suspected_clone" and view["suspected_clone_at"] is not None
    events = [e for e in logs if e["event"] == "agent_suspected_clone"]
    assert len(events) == 1
    event = events[0]
    assert (event["agent_id"], event["tenant_id"]) == (agent.agent_id, tenant)
    assert event["instance_ids"] == ["copy", "restarted"] and event["revoked"] is False
    assert event["log_level"] == "warning"
    json.dumps(event)  # one JSON line as logged
    # Policy off (the default): the agent keeps working, marked.
    assert (await _heartbeat(ca, agent, "restarted"))[0] == 200


async def test_a_tenant_policy_revokes_a_suspected_clone(
    ca: CaServer, new_tenant: TenantFactory, db: asyncpg.Connection, tmp_path: Path
) -> None:
    tenant = await new_tenant()
    await db.execute(
        "UPDATE tenants SET revoke_suspected_clones = true WHERE id = $1", uuid.UUID(tenant)
    )
    agent = await register(ca, tenant, tmp_path / "a")
    assert (await _post(ca, agent, "/agents/bootstrap", {"instance_id": "one"}))[0] == 200
    assert (await _heartbeat(ca, agent, "two"))[0] == 200
    status, answer = await _heartbeat(ca, agent, "one")
    assert (status, answer["error"]) == (401, "certificate_revoked")
    assert await _views(ca, tenant) == {}
    reason = await db.fetchval(
        "SELECT reason FROM revocations WHERE issuer = 'pta' AND serial = $1",
        format(agent.certificate.serial_number, "x"),
    )
    assert reason == "suspected_clone"
    assert agent_broker_user(agent.agent_id) not in {u["name"] for u in await _broker_users(ca)}
    status, answer = await _heartbeat(ca, agent, "two")
    assert (status, answer["error"]) == (401, "certificate_revoked")


async def test_old_agents_without_instance_ids_still_work(
    ca: CaServer, new_tenant: TenantFactory, tmp_path: Path
) -> None:
    tenant = await new_tenant()
    agent = await register(ca, tenant, tmp_path / "a")
    assert (await _post(ca, agent, "/agents/bootstrap", {}))[0] == 200
    assert (await _heartbeat(ca, agent, None))[0] == 200
    assert (await _views(ca, tenant))[agent.agent_id]["state"] == "active"
