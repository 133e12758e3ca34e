"""``pta-agent test-logon`` as an operator runs it: the real CLI in a subprocess, the
stack's slapd, the password on standard input, no registration and no cloud."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from infra.demo import UserState
from infra.stack import Stack
from tests.support.stack_agents import agent_env, pta_agent

pytestmark = pytest.mark.stack


def run_test_logon(
    stack: Stack, username: str, password: str, state_dir: Path
) -> subprocess.CompletedProcess[str]:
    env = agent_env(stack, stack.demo.tenants[0], state_dir)
    return subprocess.run(
        [pta_agent(), "test-logon", "--username", username],
        input=password + "\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_alice_wrong_then_right_password(stack: Stack, tmp_path: Path) -> None:
    tenant = stack.demo.tenants[0]
    alice = next(u for u in tenant.users if u.uid == "alice")
    # The wrong password first: the success after it clears the failure that the wrong
    # bind counted toward alice's lockout in the directory (ppolicy), so other tests
    # never find her locked.
    wrong = run_test_logon(stack, alice.username, "Not-" + alice.password, tmp_path / "none")
    assert wrong.returncode == 1, wrong.stdout + wrong.stderr
    assert "Result:   invalid_credentials" in wrong.stdout
    right = run_test_logon(stack, alice.username, alice.password, tmp_path / "none")
    assert right.returncode == 0, right.stdout + right.stderr
    assert "Result:   success  (OK)" in right.stdout
    assert f"User:     {alice.username}" in right.stdout
    for result in (wrong, right):
        output = result.stdout + result.stderr
        assert alice.password not in output  # never echoed, printed or logged
        assert tenant.service_password not in output
    assert not (tmp_path / "none").exists()  # no state folder needed or written


def test_directory_state_is_explained(stack: Stack, tmp_path: Path) -> None:
    user = next(u for u in stack.demo.tenants[0].users if u.state is UserState.ACCOUNT_DISABLED)
    result = run_test_logon(stack, user.username, user.password, tmp_path)
    assert result.returncode == 1
    assert "Result:   account_disabled" in result.stdout and "To do:" in result.stdout


def test_an_unreachable_directory_exits_2(stack: Stack, tmp_path: Path) -> None:
    tenant = stack.demo.tenants[0]
    alice = next(u for u in tenant.users if u.uid == "alice")
    env = agent_env(stack, tenant, tmp_path)
    env["PTA_AGENT_LDAP_URL"] = "ldap://127.0.0.1:1"
    result = subprocess.run(
        [pta_agent(), "test-logon", "--username", alice.username],
        input=alice.password + "\n", env=env, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "directory_unavailable" in result.stdout
    assert alice.password not in result.stdout + result.stderr
