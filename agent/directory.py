"""The agent's one interface to the on-premises directory: ``Directory`` and its ``Verdict``.

Shaped like dex's connector (docs/contributing.md §2): an *answer* from the directory is a value,
a ``Verdict`` whose status is one of ``common.wire.Status`` (success, invalid_credentials,
password_expired, ...); *not being able to ask* is an exception, ``DirectoryUnavailable``
or ``DirectoryTimeout`` (or their base ``DirectoryError`` for anything else the adapter
cannot make sense of). The consumer turns both into a reply: a verdict's status as is, an
exception's ``status`` class attribute.

Implementations: ``agent.ldap_directory.LdapDirectory`` (ldap3, OpenLDAP with ppolicy or
Active Directory) and ``FakeDirectory`` here, for pure tests of the code above it. Both
keep the rules every implementation must keep (docs/design.md §7):
- an empty password is ``invalid_credentials`` without asking the directory at all;
- a wrong password and an unknown user give the same status and the same detail;
- no password ever appears in a verdict, an exception message or a log line.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Final, Protocol

from agent.errors import AgentError
from common.wire import MAX_DETAIL_CHARS, Status

__all__ = [
    "REJECTED_DETAIL",
    "Directory",
    "DirectoryError",
    "DirectoryMisconfigured",
    "DirectoryTimeout",
    "DirectoryUnavailable",
    "FakeDirectory",
    "Verdict",
]

# The one detail for "wrong password" and "no such user": the reply must not tell them
# apart (docs/design.md §5: indistinguishable outside).
REJECTED_DETAIL = "the directory rejected the username or password"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The directory's answer about one username and password.

    ``detail`` is short operator text for the reply and the logs (at most
    ``MAX_DETAIL_CHARS``, longer text is cut); it never holds a secret.
    """

    status: Status
    detail: str = ""

    def __post_init__(self) -> None:
        if len(self.detail) > MAX_DETAIL_CHARS:
            object.__setattr__(self, "detail", self.detail[: MAX_DETAIL_CHARS - 3] + "...")

    @property
    def is_success(self) -> bool:
        return self.status is Status.SUCCESS


class DirectoryError(AgentError):
    """The directory could not answer the question; see the detail for why."""

    # The reply status a consumer sends when this is why it could not validate.
    status: ClassVar[Status] = Status.AGENT_ERROR


class DirectoryUnavailable(DirectoryError):
    """The directory could not be reached: check that the directory server is up and
    reachable from this host (setting url)."""

    status = Status.DIRECTORY_UNAVAILABLE


class DirectoryTimeout(DirectoryError):
    """The directory did not answer in time: check the directory server's load and the
    network between this host and it (setting ``timeout_s``)."""

    status = Status.DIRECTORY_TIMEOUT


class DirectoryMisconfigured(DirectoryError):
    """A directory setting is invalid: fix the setting named in the message."""


BIND_MARGIN_S: Final = 0.25
"""A bind is not started with less than this left before the request's deadline.

A healthy bind takes milliseconds; with less than a quarter second left, its answer would
hardly travel back (agent, broker, STS) before the STS answers the user 80002, and the
directory would count a failed bind nobody sees the result of (issue 8 finding 10).
"""
TOO_LATE_DETAIL: Final = "too little time left before the request's deadline: not bound"


class Directory(Protocol):
    """Validates a username and password against the on-premises directory."""

    async def validate(
        self, username: str, password: str, *, deadline: float | None = None
    ) -> Verdict:
        """Return the directory's verdict on ``username`` and ``password``.

        ``deadline`` (Unix time): the request's; a bind that could not finish before it
        (less than ``BIND_MARGIN_S`` left) is not started, the answer is then
        ``directory_timeout`` (the directory never sees a bind whose answer nobody waits
        for). Raises ``DirectoryUnavailable``, ``DirectoryTimeout`` or another
        ``DirectoryError`` when the directory could not be asked.
        """
        ...

    async def aclose(self) -> None:
        """Release connections and threads; ``validate`` must not be called afterwards."""
        ...


@dataclass(slots=True)
class FakeDirectory:
    """An in-memory ``Directory`` for pure tests.

    ``users`` maps a username to (password, status when that password is given); a wrong
    password or an unknown user is ``invalid_credentials``. ``error``, when set, is raised
    by every ``validate`` instead; ``calls`` records the usernames asked (never passwords).
    """

    users: Mapping[str, tuple[str, Status]] = field(default_factory=dict)
    error: BaseException | None = None
    calls: list[str] = field(default_factory=list)
    is_closed: bool = False

    async def validate(
        self, username: str, password: str, *, deadline: float | None = None
    ) -> Verdict:
        """See ``Directory.validate``."""
        if self.is_closed:
            raise DirectoryError("validate() after aclose()")
        if not password:
            return Verdict(Status.INVALID_CREDENTIALS, "empty password refused")
        if deadline is not None and time.time() > deadline - BIND_MARGIN_S:
            return Verdict(Status.DIRECTORY_TIMEOUT, TOO_LATE_DETAIL)
        self.calls.append(username)
        if self.error is not None:
            raise self.error
        known = self.users.get(username)
        if known is None or known[0] != password:
            return Verdict(Status.INVALID_CREDENTIALS, REJECTED_DETAIL)
        return Verdict(known[1], "" if known[1] is Status.SUCCESS else f"fake: {known[1]}")

    async def aclose(self) -> None:
        """See ``Directory.aclose``."""
        self.is_closed = True
