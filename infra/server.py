"""The contract every private server of the stack implements.

The launcher (`infra.stack`) drives each server through the same five steps:
`prepare` (create its state on disk, idempotent), `programs` (how the supervisor runs it
in the foreground), `wait_ready` (real readiness: a protocol handshake, not a port probe),
`configure` (post-start set-up, idempotent) and `health` (for `pta-stack status`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Protocol


class StackError(Exception):
    """The stack could not be brought up or down; the message says what to do."""


class ServerNotReady(StackError):
    """A server did not become ready in time; its log under .stack/logs/ says why."""


@dataclass(frozen=True, slots=True)
class Program:
    """One long-running process as the supervisor runs it (in the foreground)."""

    name: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None  # run as this OS user (postgres refuses root)
    directory: str | None = None
    stop_signal: str = "TERM"
    stop_wait_s: int = 15
    # Seconds the process must stay up for the supervisor to call it started.
    start_s: int = 1


@dataclass(frozen=True, slots=True)
class Health:
    """What `status` prints for one component."""

    name: str
    is_healthy: bool
    endpoint: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Ports:
    """Every loopback port the stack listens on. Never a server's default port."""

    amqp: int
    amqp_management: int
    amqp_dist: int
    epmd: int
    amqp_ctl_dist: int  # first of a range of 10 for rabbitmqctl's own distribution
    postgres: int
    ldap: int
    ldaps: int
    sts: int
    sts2: int
    ca: int
    crl: int
    supervisor: int

    @classmethod
    def from_base(cls, base: int) -> Ports:
        """Lay the ports out from one base port (base .. base+22)."""
        return cls(
            amqp=base,
            amqp_management=base + 1,
            amqp_dist=base + 2,
            epmd=base + 3,
            amqp_ctl_dist=base + 4,  # .. base + 13
            postgres=base + 14,
            ldap=base + 15,
            ldaps=base + 16,
            sts=base + 17,
            sts2=base + 18,
            ca=base + 19,
            crl=base + 20,
            supervisor=base + 21,
        )

    def listening(self) -> dict[str, int]:
        """The ports our processes listen on, by name (the ctl range is only dialled from)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "amqp_ctl_dist"}


@dataclass(frozen=True, slots=True)
class Layout:
    """Where one stack lives: its state folder and its ports."""

    state_dir: Path
    ports: Ports

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    def server_dir(self, name: str) -> Path:
        return self.state_dir / name


class Server(Protocol):
    """A private server of the stack (RabbitMQ, PostgreSQL, slapd)."""

    name: str

    def prepare(self) -> None:
        """Create the server's state under the layout (idempotent, servers not running)."""

    def programs(self) -> list[Program]:
        """How the supervisor runs the server in the foreground (one or more processes)."""

    async def wait_ready(self, timeout_s: float) -> None:
        """Return once the server answers its protocol; raise ServerNotReady otherwise."""

    async def configure(self) -> None:
        """Post-start set-up (users, schema, vhosts), idempotent."""

    async def health(self) -> Health:
        """One health line for `status`; never raises."""
