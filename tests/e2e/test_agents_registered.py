"""The stack's demo agents: registered through the real CLI, active, and the CA agrees.

Issue 3 "done when": `make up` shows 5 registered, active agents, and `pta-agent status`
and the CA agree on each of them.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest

from infra.stack import Stack

pytestmark = pytest.mark.stack

PTA_AGENT = str(Path(sys.executable).with_name("pta-agent"))


def _agent_status(state_dir: str) -> dict[str, object]:
    result = subprocess.run(
        [PTA_AGENT, "status", "--state-dir", state_dir, "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    doc: dict[str, object] = json.loads(result.stdout)
    return doc


def test_five_agents_in_stack_json(stack: Stack) -> None:
    doc = json.loads(stack.stack_json_path.read_text())
    by_tenant: dict[str, int] = {}
    for agent in doc["agents"]:
        uuid.UUID(agent["id"])
        by_tenant[agent["tenant_id"]] = by_tenant.get(agent["tenant_id"], 0) + 1
    contoso, fabrikam = (t["id"] for t in doc["tenants"])
    assert by_tenant == {contoso: 3, fabrikam: 2}
    assert Path(doc["ca_bundle"]).is_file()
    assert doc["sts_url"].startswith(f"https://{stack.public_ip}:")
    assert doc["ca_url"].startswith("https://127.0.0.1:")
    assert doc["crl_url"].startswith("http://127.0.0.1:")


async def test_agent_status_and_the_ca_agree(stack: Stack) -> None:
    agents = json.loads(stack.stack_json_path.read_text())["agents"]
    conn = await asyncpg.connect(stack.postgres_dsn)
    try:
        for agent in agents:
            status = _agent_status(agent["state_dir"])
            row = await conn.fetchrow(
                "SELECT tenant_id::text, kid, cert_serial, last_heartbeat_at FROM agents "
                "WHERE id = $1",
                uuid.UUID(agent["id"]),
            )
            assert row is not None, agent
            cloud = status["cloud"]
            assert isinstance(cloud, dict)
            assert status["agent_id"] == agent["id"] == cloud["agent_id"]
            assert status["tenant_id"] == row["tenant_id"] == agent["tenant_id"]
            assert status["kid"] == row["kid"]
            certificate = status["certificate"]
            assert isinstance(certificate, dict)
            assert certificate["serial"] == row["cert_serial"]
            assert cloud["status"] == "active"
            assert row["last_heartbeat_at"] is not None
            # The lifecycle fields (issue 10), in the cloud's view and at the top level.
            for name in ("state", "version", "host", "last_heartbeat_at",
                         "certificate_not_after", "renewal"):  # fmt: skip
                assert cloud[name] is not None, name
                assert status[name] is not None, name
            assert status["state"] == cloud["state"] == "active"
            assert cloud["certificate_not_after"] == cloud["cert_not_after"]
    finally:
        await conn.close()


async def test_agent_private_keys_stay_private(stack: Stack) -> None:
    for agent in json.loads(stack.stack_json_path.read_text())["agents"]:
        key = Path(agent["state_dir"]) / "agent.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        pem = key.read_bytes()
        assert b"PRIVATE KEY" in pem
        # The key is not in the cloud database in any column (only the SPKI is stored).
        body = b"".join(pem.splitlines()[1:-1]).decode()
        conn = await asyncpg.connect(stack.postgres_dsn)
        try:
            hits = await conn.fetchval(
                "SELECT count(*) FROM agents WHERE encode(spki, 'base64') LIKE $1",
                f"%{body[:40]}%",
            )
        finally:
            await conn.close()
        assert hits == 0
