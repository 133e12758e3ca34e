"""The launcher: up, idempotent up, down by pid, stale pid file, port taken."""

from __future__ import annotations

import shutil
import socket
import stat
from pathlib import Path

import psutil
import pytest

from infra.ports import free_port_base
from infra.preflight import PortTaken
from infra.stack import Stack
from tests.conftest import make_state_dir

pytestmark = pytest.mark.stack


async def test_session_stack_is_healthy(stack: Stack) -> None:
    healths = await stack.status()
    names = {h.name for h in healths}
    assert {"rabbitmq", "postgres", "slapd", "sts", "sts2", "ca"} <= names
    assert len([n for n in names if n.startswith("agent-")]) == 5
    assert all(h.is_healthy for h in healths), healths


async def test_every_process_runs_including_five_agents(stack: Stack) -> None:
    states = stack.supervisor.states()
    agents = sorted(name for name in states if name.startswith("agent-"))
    assert agents == [
        "agent-contoso-1",
        "agent-contoso-2",
        "agent-contoso-3",
        "agent-fabrikam-1",
        "agent-fabrikam-2",
    ]
    assert all(st.state == "RUNNING" for st in states.values()), states


async def test_second_up_is_a_noop(stack: Stack) -> None:
    before = {name: st.pid for name, st in stack.supervisor.states().items()}
    report = await stack.up()
    assert report.was_running
    assert report.started == []
    after = {name: st.pid for name, st in stack.supervisor.states().items()}
    assert after == before  # nothing restarted


async def test_stack_json_contract(stack: Stack) -> None:
    import json

    doc = json.loads(stack.stack_json_path.read_text())
    assert stack.stack_json_path.stat().st_mode & 0o077 == 0  # holds credentials
    for key in ("amqp_url", "amqp_management_url", "postgres_dsn", "ldap_url"):
        assert doc["servers"][key]
    assert [t["domain"] for t in doc["tenants"]] == ["contoso.test", "fabrikam.test"]
    for tenant in doc["tenants"]:
        states = {u["state"] for u in tenant["users"]}
        assert states >= {
            "active",
            "password_expired",
            "must_change_password",
            "account_locked",
            "account_disabled",
        }
        bulk = [u for u in tenant["users"] if u["username"].startswith("user")]
        assert len(bulk) >= 1000
        assert bulk[0]["username"] == f"user0001@{tenant['domain']}"
        assert tenant["admin"]["username"] == f"admin@{tenant['domain']}"


async def test_up_then_down_leaves_no_process() -> None:
    state = make_state_dir("pta-launcher-")
    try:
        s = Stack(state, free_port_base(), durable=False, with_services=False)
        await s.up()
        # Logs are private from the first start (issue 8, finding 11): supervisord opens
        # its own log before its umask applies, the servers' logs come after it.
        assert stat.S_IMODE(s.layout.logs_dir.stat().st_mode) == 0o700
        for path in s.layout.logs_dir.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        procs = s.supervisor.processes()
        pids = [p.pid for p in procs]
        assert len(pids) >= 5  # supervisord, epmd, rabbitmq, postgres, slapd and children
        # Every listening port of the stack is held by one of our processes, on loopback.
        ours = set(pids)
        for conn in psutil.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.pid in ours:
                assert conn.laddr.ip in ("127.0.0.1", "::1"), conn
        stopped = s.down()
        assert set(pids) <= set(stopped)
        alive = [pid for pid in pids if psutil.pid_exists(pid)
                 and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]  # fmt: skip
        assert alive == []
        assert not s.supervisor.is_running()
        assert s.down() == []  # a second down is harmless
    finally:
        shutil.rmtree(state, ignore_errors=True)


async def test_port_taken_names_port_and_holder() -> None:
    state = make_state_dir("pta-ports-")
    base = free_port_base()
    try:
        s = Stack(state, base, durable=False, with_services=False)
        port = s.layout.ports.postgres
        with socket.socket() as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", port))
            squatter.listen()
            with pytest.raises(PortTaken) as err:
                await s.up()
        message = str(err.value)
        assert f"port {port} (postgres)" in message
        assert f"pid {psutil.Process().pid}" in message
        assert not s.supervisor.is_running()  # nothing was started
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_stale_pid_file_is_recognised(tmp_path: Path) -> None:
    state = make_state_dir("pta-stale-")
    try:
        s = Stack(state, free_port_base(), durable=False, with_services=False)
        s.layout.run_dir.mkdir(parents=True, exist_ok=True)
        # A pid that is certainly not our supervisord: this test process itself.
        s.supervisor.pid_file.write_text(f"{psutil.Process().pid}\n")
        assert not s.supervisor.is_running()
        assert not s.supervisor.pid_file.exists()  # removed, and this process left alone
        assert s.down() == []
    finally:
        shutil.rmtree(state, ignore_errors=True)
