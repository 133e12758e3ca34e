"""Checks made before anything starts: server packages present, our ports free.

Missing Debian packages are installed with apt when we run as root; otherwise the error
gives the exact command. A port already taken is named with the process that holds it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psutil

from infra.server import StackError


@dataclass(frozen=True, slots=True)
class Requirement:
    package: str  # the Debian package that provides it
    binary: str  # a file the package installs; its absence means the package is missing


REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement("rabbitmq-server", "/usr/lib/rabbitmq/bin/rabbitmq-server"),
    Requirement("postgresql", "/usr/lib/postgresql/15/bin/postgres"),
    Requirement("slapd", "/usr/sbin/slapd"),
    Requirement("ldap-utils", "/usr/bin/ldapsearch"),
)


class PackagesMissing(StackError):
    """Server packages are missing and we are not root to install them."""


class PortTaken(StackError):
    """A port of the stack is already in use by another process."""


def missing_packages(requirements: tuple[Requirement, ...] = REQUIREMENTS) -> list[str]:
    return [r.package for r in requirements if not Path(r.binary).exists()]


def ensure_packages(echo: bool = True) -> list[str]:
    """Install the missing server packages (root), or raise with the command to run.

    Package scripts must not start the system-wide services: policy-rc.d is honoured by
    invoke-rc.d, so we install with a temporary one that denies every start.
    """
    missing = missing_packages()
    if not missing:
        return []
    command = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if os.geteuid() != 0:
        raise PackagesMissing(
            "server packages are missing: "
            + ", ".join(missing)
            + f"\nrun: sudo apt-get update && sudo {' '.join(command)}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    policy = Path("/usr/sbin/policy-rc.d")
    had_policy = policy.exists()
    try:
        if not had_policy:
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
        for step in (["apt-get", "update", "-qq"], command):
            if echo:
                print("+", " ".join(step), flush=True)
            result = subprocess.run(
                step, env=env, capture_output=True, text=True, timeout=900, check=False
            )
            if result.returncode != 0:
                raise StackError(f"{' '.join(step)} failed:\n{result.stderr[-2000:]}")
    finally:
        if not had_policy:
            policy.unlink(missing_ok=True)
    still = missing_packages()
    if still:
        raise StackError(f"packages still missing after apt-get install: {', '.join(still)}")
    return missing


def holder_of(port: int) -> str | None:
    """Describe the process listening on 127.0.0.1/0.0.0.0:port, or None if it is free."""
    for conn in psutil.net_connections(kind="inet"):
        if conn.status != psutil.CONN_LISTEN or not conn.laddr or conn.laddr.port != port:
            continue
        if conn.pid is None:
            return "an unknown process (run as root to see which)"
        try:
            proc = psutil.Process(conn.pid)
            cmd = " ".join(proc.cmdline())[:160] or proc.name()
            return f"pid {conn.pid} ({cmd})"
        except psutil.Error:
            return f"pid {conn.pid}"
    return None


def check_ports_free(ports: dict[str, int]) -> None:
    """Raise PortTaken naming every taken port and what holds it."""
    taken = []
    for name, port in ports.items():
        holder = holder_of(port)
        if holder is not None:
            taken.append(f"port {port} ({name}) is held by {holder}")
    if taken:
        raise PortTaken(
            "cannot start the stack:\n  "
            + "\n  ".join(taken)
            + "\nstop that process, or choose other ports with --port-base"
        )


def can_bind(ip: str, port: int) -> bool:
    """True when this process could listen on ip:port right now (root for port < 1024)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((ip, port))
        except OSError:
            return False
    return True


def which(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise StackError(f"{name} not found on PATH")
    return found
