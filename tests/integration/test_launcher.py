"""The launcher: up, idempotent up, down by pid, stale pid file, port taken, and a
checkout anywhere (below a private folder, in a path with spaces)."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import stat
import tempfile
from pathlib import Path

import asyncpg
import psutil
import pytest

from infra import stackuser
from infra.ports import free_port_base
from infra.preflight import PortTaken
from infra.server import StackError
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
    s = Stack(state, free_port_base(), durable=False, with_services=False)
    try:
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
        _assert_down_stopped(pids, s.down())
        assert not s.supervisor.is_running()
        assert s.down() == []  # a second down is harmless
    finally:
        s.purge()


async def test_port_taken_names_port_and_holder() -> None:
    state = make_state_dir("pta-ports-")
    base = free_port_base()
    s = Stack(state, base, durable=False, with_services=False)
    try:
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
        s.purge()


def test_stale_pid_file_is_recognised(tmp_path: Path) -> None:
    state = make_state_dir("pta-stale-")
    s = Stack(state, free_port_base(), durable=False, with_services=False)
    try:
        s.layout.run_dir.mkdir(parents=True, exist_ok=True)
        # A pid that is certainly not our supervisord: this test process itself.
        s.supervisor.pid_file.write_text(f"{psutil.Process().pid}\n")
        assert not s.supervisor.is_running()
        assert not s.supervisor.pid_file.exists()  # removed, and this process left alone
        assert s.down() == []
    finally:
        s.purge()


# -- a checkout anywhere (issue 9) ------------------------------------------------------


def _private_home() -> Path:
    """A folder only its owner may enter, like root's home or a `mktemp -d` (mode 0700)."""
    home = Path(tempfile.mkdtemp(prefix="pta-home-"))
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    return home


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _has_acl(path: Path) -> bool:
    try:
        os.getxattr(path, "system.posix_acl_access")
    except OSError:
        return False
    return True


def _is_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _assert_no_process_left(pids: list[int]) -> None:
    assert [pid for pid in pids if _is_alive(pid)] == []


def _assert_down_stopped(pids: list[int], stopped: list[int]) -> None:
    """`down` reports every process it stopped; a pid it did not report must be one that
    ended by itself in between (a server's short-lived helper child), not one left."""
    assert [pid for pid in set(pids) - set(stopped) if _is_alive(pid)] == []
    _assert_no_process_left(pids)


async def test_up_from_a_checkout_below_a_private_folder() -> None:
    """`make up` in /root/pta: the stack user never has to enter the 0700 home."""
    home = _private_home()
    checkout = home / "pta"
    checkout.mkdir(mode=0o755)
    state = checkout / ".stack"
    s = Stack(state, free_port_base(), durable=False, with_services=False)
    data = s.stack_user_dir
    try:
        await s.up()
        assert all(h.is_healthy for h in await s.status())
        # Nothing was widened: the home stays 0700 with no ACL, the state folder private.
        assert _mode(home) == 0o700 and not _has_acl(home)
        assert _mode(checkout) == 0o755 and not _has_acl(checkout)
        assert _mode(state) == 0o700
        if os.geteuid() == 0:
            # PostgreSQL (run as the stack user) keeps its data outside the checkout.
            assert data is not None and not data.is_relative_to(home)
            assert (data / "postgres" / "data" / "PG_VERSION").exists()
        else:
            assert data is None
        conn = await asyncpg.connect(s.postgres.admin_dsn)
        try:
            await conn.execute("CREATE TABLE kept_across_down (n int)")
        finally:
            await conn.close()
        pids = [p.pid for p in s.supervisor.processes()]
        _assert_down_stopped(pids, s.down())

        # `down` keeps the data: the next `up` runs the same cluster.
        again = Stack(state, durable=False, with_services=False)
        assert again.stack_user_dir == data
        await again.up()
        conn = await asyncpg.connect(again.postgres.admin_dsn)
        try:
            assert await conn.fetchval("SELECT to_regclass('kept_across_down') IS NOT NULL")
        finally:
            await conn.close()
        pids = [p.pid for p in again.supervisor.processes()]
        _assert_down_stopped(pids, again.down())
    finally:
        s.purge()
        assert not state.exists()
        assert data is None or not data.exists()  # purge removes the outside folder too
        shutil.rmtree(home, ignore_errors=True)


async def test_up_in_a_path_with_spaces() -> None:
    """The whole stack (servers, STS, CA, five agents) from `/home/x/my projects/pta dev`."""
    home = _private_home()
    state = home / "my projects" / "pta dev" / ".stack"
    # Its own loopback address, out of the session stack's range (127.0.0.10-249).
    public_ip = f"127.0.0.{250 + secrets.randbelow(5)}"
    s = Stack(state, free_port_base(), durable=False, public_ip=public_ip)
    data = s.stack_user_dir
    try:
        await s.up()
        healths = await s.status()
        assert all(h.is_healthy for h in healths), healths
        assert len([h for h in healths if h.name.startswith("agent-")]) == 5
        states = s.supervisor.states()
        assert all(st.state == "RUNNING" for st in states.values()), states
        pids = [p.pid for p in s.supervisor.processes()]
        _assert_down_stopped(pids, s.down())
        assert not s.supervisor.is_running()
    finally:
        s.purge()
        assert not state.exists()
        assert data is None or not data.exists()
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs a server as the stack user")
async def test_up_stops_before_starting_when_the_stack_user_cannot_write() -> None:
    home = _private_home()
    unreachable = home / "data"  # below a 0700 folder: the stack user cannot enter it
    state = home / "pta" / ".stack"
    s = Stack(state, free_port_base(), durable=False, with_services=False, data_root=unreachable)
    try:
        with pytest.raises(StackError) as err:
            await s.up(install_packages=False)
        message = str(err.value)
        assert str(unreachable) in message
        assert "PTA_STACK_DATA_ROOT" in message  # the fix
        assert not s.supervisor.is_running()
        assert not (state / "supervisord.conf").exists()  # nothing was started
        assert s.stack_user_dir is not None and not s.stack_user_dir.exists()
        # The fix: another data root, taken by the next `up` since no cluster was made.
        fixed = Stack(state, data_root=stackuser.DEFAULT_ROOT)
        assert fixed.stack_user_dir is not None
        assert fixed.stack_user_dir.parent == stackuser.DEFAULT_ROOT
    finally:
        s.purge()
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs a server as the stack user")
def test_a_copied_state_folder_does_not_share_the_data_a_moved_one_keeps_it(
    tmp_path: Path,
) -> None:
    folder = stackuser.choose(stackuser.DEFAULT_ROOT, tmp_path / ".stack")
    original, copy = tmp_path / "original", tmp_path / "copy"
    for state in (original, copy):
        state.mkdir()
        (state / "layout.json").write_text(f'{{"stack_user_dir": "{folder}"}}\n')
    try:
        stackuser.prepare(folder, original, durable=False)
        with pytest.raises(StackError, match="copied from it"):
            stackuser.prepare(folder, copy, durable=False)
        assert stackuser.remove(folder, copy) is False  # the copy's purge leaves it
        (original / "layout.json").unlink()  # the original moved to `copy`: it takes over
        stackuser.prepare(folder, copy, durable=False)
        assert stackuser.remove(folder, original) is False
        assert stackuser.remove(folder, copy) is True
    finally:
        shutil.rmtree(folder, ignore_errors=True)
