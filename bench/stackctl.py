"""The few stack controls the benchmark needs: stop and start agents, count consumers.

The stack's processes are supervisord programs (``infra.supervisor``); the benchmark
drives them the way an operator would, with ``supervisorctl -c <state>/supervisord.conf``,
and reads a program's command and environment from that file so that a pinned copy of an
agent runs exactly as the supervised one does. Queue consumers come from the RabbitMQ
management API (an agent counts once it consumes its tenant queue).
"""

from __future__ import annotations

import asyncio
import base64
import configparser
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import aiohttp

from bench.target import StackTarget, require_loopback
from common.contracts import tenant_queue, tenant_vhost

__all__ = ["ProgramSpec", "StackControlError", "Supervisorctl", "queue_consumers", "wait_consumers"]


class StackControlError(RuntimeError):
    """The stack did not do what the benchmark asked; see the stack's logs folder."""


@dataclass(frozen=True, slots=True)
class ProgramSpec:
    """How supervisord runs one program: its argv and extra environment."""

    command: list[str]
    env: dict[str, str]


class Supervisorctl:
    """``supervisorctl`` against one stack's supervisord (its unix socket, not TCP)."""

    def __init__(self, state_dir: Path) -> None:
        self.conf = state_dir / "supervisord.conf"
        if not self.conf.is_file():
            raise StackControlError(f"{self.conf} not found: is the stack up (`make up`)?")
        self.binary = str(Path(sys.executable).with_name("supervisorctl"))

    def _ctl(self, *args: str) -> str:
        result = subprocess.run(
            [self.binary, "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        # Exit 3 is "some program not RUNNING" for status; anything else is a failure.
        if result.returncode not in (0, 3):
            raise StackControlError(
                f"supervisorctl {' '.join(args)}: {(result.stdout + result.stderr).strip()}"
            )
        return result.stdout

    def states(self) -> dict[str, str]:
        """Program name -> state (RUNNING, STOPPED, ...)."""
        out = {}
        for line in self._ctl("status").splitlines():
            parts = line.split()
            if len(parts) >= 2:
                out[parts[0]] = parts[1]
        return out

    def stop(self, names: list[str]) -> None:
        if names:
            self._ctl("stop", *names)

    def start(self, names: list[str]) -> None:
        if names:
            self._ctl("start", *names)

    def program(self, name: str) -> ProgramSpec:
        """The command and environment of ``[program:<name>]`` in supervisord.conf."""
        from supervisor.datatypes import dict_of_key_value_pairs

        parser = configparser.RawConfigParser()
        parser.read(self.conf)
        section = f"program:{name}"
        if not parser.has_section(section):
            raise StackControlError(f"no program {name} in {self.conf}")
        # The file is %-interpolated by supervisord: a literal % is written %%.
        command = shlex.split(parser.get(section, "command").replace("%%", "%"))
        env_text = parser.get(section, "environment", fallback="")
        env = dict_of_key_value_pairs(env_text.replace("%%", "%")) if env_text else {}
        return ProgramSpec(command=command, env={str(k): str(v) for k, v in env.items()})


def _auth_header(target: StackTarget) -> dict[str, str]:
    user, password = target.amqp_admin
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def queue_consumers(target: StackTarget, tenant_id: str) -> int:
    """Consumers of the tenant's queue (in its own vhost), from the management API."""
    base = require_loopback(target.amqp_management_url, "amqp_management_url")
    vhost, queue = quote(tenant_vhost(tenant_id), safe=""), quote(tenant_queue(tenant_id), safe="")
    url = f"{base}/api/queues/{vhost}/{queue}"
    async with aiohttp.ClientSession(headers=_auth_header(target)) as http:
        async with asyncio.timeout(5):
            async with http.get(url) as response:
                if response.status != 200:
                    raise StackControlError(f"management API {url}: HTTP {response.status}")
                doc = await response.json()
    return int(doc.get("consumers", 0))


async def wait_consumers(
    target: StackTarget, tenant_id: str, count: int, *, timeout_s: float = 60.0
) -> float:
    """Wait until the tenant's queue has exactly ``count`` consumers; returns the seconds
    it took.

    The management API refreshes its statistics every few seconds, so this polls. Raises
    ``StackControlError`` after ``timeout_s``.
    """
    t0 = time.monotonic()
    seen = -1
    while time.monotonic() - t0 < timeout_s:
        seen = await queue_consumers(target, tenant_id)
        if seen == count:
            return time.monotonic() - t0
        await asyncio.sleep(0.5)
    raise StackControlError(
        f"{tenant_queue(tenant_id)} has {seen} consumers, not {count}, after {timeout_s:.0f} s: "
        "see the agents' logs in the stack's logs folder"
    )
