"""``pta-agent test-logon``: validate one username and password locally, and explain it.

An operator runs it on the agent's host to check the directory settings without going
through the cloud: the same ``Directory`` the daemon uses answers, and the result is
printed as the status, what it means and what to do. A directory that cannot be asked
is shown the same way (``directory_unavailable``, ``directory_timeout``, ``agent_error``)
instead of a traceback. The password is never printed.

``test_logon`` is not a pytest test; ``__test__ = False`` keeps pytest from collecting it
when a test module imports it by name.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final

from agent.directory import Directory, DirectoryError, Verdict
from common.wire import Status

__all__ = ["EXPLANATIONS", "LogonResult", "exit_code", "format_result", "test_logon", "timed_logon"]

# status -> (what it means, what to do). Every status an agent can reach is listed.
EXPLANATIONS: Final[dict[Status, tuple[str, str]]] = {
    Status.SUCCESS: (
        "The directory accepted the password.",
        "Nothing: sign-ins of this user will succeed (unless cloud policy says otherwise).",
    ),
    Status.INVALID_CREDENTIALS: (
        "Wrong password, or no entry found for this username.",
        "Check the password; check that exactly one entry under PTA_AGENT_LDAP_BASE_DN "
        "has this username in PTA_AGENT_LDAP_LOGIN_ATTRIBUTE (and the user object class).",
    ),
    Status.PASSWORD_EXPIRED: (
        "The password is right but has expired.",
        "The user must change it on-premises first.",
    ),
    Status.MUST_CHANGE_PASSWORD: (
        "The password was reset by an administrator and must be changed at next logon.",
        "The user must change it on-premises first.",
    ),
    Status.ACCOUNT_LOCKED: (
        "The account is locked in the directory after too many failed sign-ins.",
        "Wait for the lockout to end or unlock the account in the directory.",
    ),
    Status.ACCOUNT_DISABLED: (
        "The account is disabled in the directory.",
        "Enable the account in the directory if this user should sign in.",
    ),
    Status.ACCOUNT_EXPIRED: (
        "The account is past its expiry date.",
        "Extend the account's expiry in the directory.",
    ),
    Status.LOGON_HOURS: (
        "The account may not sign in now or from here (logon hours or workstations).",
        "Adjust the account's logon hours or workstation list in the directory.",
    ),
    Status.INVALID_USERNAME: (
        "The agent cannot use this username.",
        "Use user@<PTA_AGENT_LDAP_DOMAIN>; it must match one directory entry only.",
    ),
    Status.DIRECTORY_UNAVAILABLE: (
        "The agent could not reach the directory or its service account was refused.",
        "Check PTA_AGENT_LDAP_URL, PTA_AGENT_LDAP_BIND_DN, the bind password and that "
        "this host can reach the server (PTA_AGENT_LDAP_CA_FILE for ldaps).",
    ),
    Status.DIRECTORY_TIMEOUT: (
        "The directory did not answer in time.",
        "Check the directory server's load and the network; raise "
        "PTA_AGENT_LDAP_TIMEOUT_S if needed.",
    ),
    Status.DECRYPT_FAILED: (
        "The agent could not decrypt a request.",
        "Not expected from test-logon; re-register the agent if sign-ins show it.",
    ),
    Status.KEY_NOT_FOUND: (
        "A request held no key for this agent.",
        "Not expected from test-logon; check that the agent is registered and active.",
    ),
    Status.AGENT_ERROR: (
        "The agent failed unexpectedly.",
        "See the detail and the agent's log; report it if it persists.",
    ),
}


@dataclass(frozen=True, slots=True)
class LogonResult:
    """A test logon's verdict and how long the directory took."""

    username: str
    verdict: Verdict
    elapsed_ms: float


async def test_logon(directory: Directory, username: str, password: str) -> Verdict:
    """Validate ``username`` and ``password`` as a sign-in would; never raises for a
    directory fault: ``DirectoryError`` becomes the verdict of its status."""
    try:
        return await directory.validate(username, password)
    except DirectoryError as exc:
        return Verdict(exc.status, str(exc))


test_logon.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


async def timed_logon(directory: Directory, username: str, password: str) -> LogonResult:
    """``test_logon`` plus the time it took (for the CLI's output)."""
    started = time.perf_counter()
    verdict = await test_logon(directory, username, password)
    return LogonResult(username, verdict, (time.perf_counter() - started) * 1000)


def format_result(result: LogonResult) -> str:
    """Human text for the terminal: status, meaning, what to do, detail and time."""
    meaning, action = EXPLANATIONS.get(
        result.verdict.status, ("Unknown status.", "Report this to the developers.")
    )
    lines = [
        f"User:     {result.username}",
        f"Result:   {result.verdict.status}" + ("  (OK)" if result.verdict.is_success else ""),
        f"Meaning:  {meaning}",
        f"To do:    {action}",
    ]
    if result.verdict.detail:
        lines.append(f"Detail:   {result.verdict.detail}")
    lines.append(f"Took:     {result.elapsed_ms:.1f} ms")
    return "\n".join(lines)


def exit_code(verdict: Verdict) -> int:
    """0 for success, 1 for a directory answer that is not success, 2 when the directory
    could not be asked (so scripts can tell "wrong password" from "agent broken")."""
    if verdict.is_success:
        return 0
    if verdict.status in (
        Status.DIRECTORY_UNAVAILABLE,
        Status.DIRECTORY_TIMEOUT,
        Status.AGENT_ERROR,
    ):
        return 2
    return 1
