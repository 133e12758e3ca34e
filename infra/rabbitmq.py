"""A private RabbitMQ node: own node name, ports, Erlang cookie, epmd, data and logs.

Stands in for Azure Service Bus (DESIGN.md). Everything the node reads comes from the
environment we give it (INFRA-NOTES.md): HOME (cookie), a private epmd on its own port,
distribution bound to 127.0.0.1, the management plugin on its own loopback port.
After start, `configure` creates the `pta` vhost, the admin's permissions on it and the
`pta.replies` exchange through the management HTTP API.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from pathlib import Path
from urllib.parse import quote

import aio_pika
import aiohttp

from common.contracts import REPLY_EXCHANGE, VHOST
from infra.server import Health, Layout, Program, ServerNotReady, StackError

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
ERTS_GLOB = "/usr/lib/erlang/erts-*/bin/epmd"


def _epmd() -> str:
    import glob

    found = sorted(glob.glob(ERTS_GLOB))
    if not found:
        raise StackError("epmd not found (is rabbitmq-server installed?)")
    return found[-1]


class RabbitMQ:
    """The private broker of one stack."""

    name = "rabbitmq"

    def __init__(
        self, layout: Layout, admin_user: str, admin_password: str, *, durable: bool = True
    ) -> None:
        self.layout = layout
        self.durable = durable
        self.dir = layout.server_dir("rabbitmq")
        self.admin_user = admin_user
        self.admin_password = admin_password
        self.ports = layout.ports

    # -- URLs --------------------------------------------------------------------------

    @property
    def amqp_url(self) -> str:
        """The admin's AMQP URL on the pta vhost (services use this; agents get their own)."""
        return (
            f"amqp://{quote(self.admin_user, safe='')}:{quote(self.admin_password, safe='')}"
            f"@127.0.0.1:{self.ports.amqp}/{VHOST}"
        )

    @property
    def public_amqp_url(self) -> str:
        """The AMQP URL without credentials (for stack.json and agents)."""
        return f"amqp://127.0.0.1:{self.ports.amqp}/{VHOST}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.amqp_management}"

    @property
    def node_name(self) -> str:
        return f"pta{self.ports.amqp}@localhost"

    # -- Server protocol ---------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The environment for the node and for rabbitmqctl alike."""
        d = self.dir
        return {
            "PATH": f"{RABBIT_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(d),
            "RABBITMQ_NODENAME": self.node_name,
            "RABBITMQ_USE_LONGNAME": "false",
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.layout.logs_dir),
            "RABBITMQ_LOGS": "-",  # to stdout: the supervisor writes logs/rabbitmq.log
            "RABBITMQ_PID_FILE": str(d / "rabbitmq.pid"),
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.ports.amqp),
            "RABBITMQ_DIST_PORT": str(self.ports.amqp_dist),
            "RABBITMQ_CTL_DIST_PORT_MIN": str(self.ports.amqp_ctl_dist),
            "RABBITMQ_CTL_DIST_PORT_MAX": str(self.ports.amqp_ctl_dist + 9),
            "ERL_EPMD_PORT": str(self.ports.epmd),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            # Exec the VM directly (no signal-proxy shell): SIGTERM stops it gracefully.
            "RUNNING_UNDER_SYSTEMD": "true",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def prepare(self) -> None:
        d = self.dir
        (d / "mnesia").mkdir(parents=True, exist_ok=True)
        d.chmod(0o700)
        # The Erlang cookie must exist with mode 0400 before the node and the CLI start.
        cookie = d / ".erlang.cookie"
        if not cookie.exists():
            fd = os.open(cookie, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
            with os.fdopen(fd, "w") as f:
                f.write(base64.b32encode(os.urandom(20)).decode().rstrip("="))
        (d / "rabbitmq-env.conf").write_text("")
        (d / "enabled_plugins").write_text("[rabbitmq_management].\n")
        (d / "advanced.config").write_text("[].\n")
        conf = "\n".join(
            [
                f"listeners.tcp.1 = 127.0.0.1:{self.ports.amqp}",
                "management.tcp.ip = 127.0.0.1",
                f"management.tcp.port = {self.ports.amqp_management}",
                "loopback_users.guest = true",
                f"default_user = {self.admin_user}",
                f"default_pass = {self.admin_password}",
                "default_user_tags.administrator = true",
                "default_vhost = /",
                # Statistics every 5 s instead of 5 s default is fine; keep memory small.
                "vm_memory_high_watermark.relative = 0.2",
                "log.console = true",
                "log.console.level = info",
                "log.file = false",
                "",
            ]
        )
        path = d / "rabbitmq.conf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(conf)

    def programs(self) -> list[Program]:
        """epmd (private, foreground) and the node itself."""
        env = self.env()
        return [
            Program(
                name="epmd",
                command=[_epmd(), "-port", str(self.ports.epmd), "-address", "127.0.0.1"],
                env=env,
                start_s=0,
            ),
            Program(
                name="rabbitmq",
                command=[str(RABBIT_BIN / "rabbitmq-server")],
                env=env,
                directory=str(self.dir),
                # A graceful stop spends ~5 s stopping management statistics; a throwaway
                # test broker is simply killed (INFRA-NOTES.md).
                stop_signal="TERM" if self.durable else "KILL",
                stop_wait_s=30,
                start_s=2,
            ),
        ]

    def _auth(self) -> dict[str, str]:
        # aiohttp 3.14 deprecates BasicAuth/auth=: send the header ourselves.
        token = base64.b64encode(f"{self.admin_user}:{self.admin_password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    async def wait_ready(self, timeout_s: float) -> None:
        """Ready = the management API answers and an AMQP handshake succeeds."""
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        async with aiohttp.ClientSession(headers=self._auth()) as http:
            while time.monotonic() < deadline:
                try:
                    async with asyncio.timeout(2):
                        async with http.get(f"{self.management_url}/api/overview") as r:
                            if r.status != 200:
                                raise RuntimeError(f"management API answered {r.status}")
                        conn = await aio_pika.connect(
                            f"amqp://{quote(self.admin_user, safe='')}:"
                            f"{quote(self.admin_password, safe='')}@127.0.0.1:{self.ports.amqp}/"
                        )
                        await conn.close()
                    return
                except Exception as exc:
                    last = f"{type(exc).__name__}: {exc}"
                    await asyncio.sleep(0.2)
        raise ServerNotReady(
            f"RabbitMQ not ready after {timeout_s:.0f} s ({last}); "
            f"see {self.layout.logs_dir / 'rabbitmq.log'}"
        )

    async def configure(self) -> None:
        """Create the pta vhost, the admin's permissions and the reply exchange."""
        v = quote(VHOST, safe="")
        u = quote(self.admin_user, safe="")
        async with aiohttp.ClientSession(headers=self._auth()) as http:
            for method, path, body in (
                ("PUT", f"/api/vhosts/{v}", {"description": "pass-through authentication"}),
                (
                    "PUT",
                    f"/api/permissions/{v}/{u}",
                    {"configure": ".*", "write": ".*", "read": ".*"},
                ),
                (
                    "PUT",
                    f"/api/exchanges/{v}/{quote(REPLY_EXCHANGE, safe='')}",
                    {"type": "direct", "durable": True, "auto_delete": False},
                ),
            ):
                async with asyncio.timeout(10):
                    async with http.request(method, self.management_url + path, json=body) as r:
                        if r.status not in (200, 201, 204):
                            raise StackError(
                                f"RabbitMQ management {method} {path}: {r.status} {await r.text()}"
                            )

    async def health(self) -> Health:
        endpoint = f"amqp://127.0.0.1:{self.ports.amqp}"
        try:
            async with aiohttp.ClientSession(headers=self._auth()) as http:
                async with asyncio.timeout(3):
                    url = f"{self.management_url}/api/aliveness-test/{quote(VHOST, safe='')}"
                    async with http.get(url) as r:
                        ok = r.status == 200 and (await r.json()).get("status") == "ok"
                        detail = "aliveness ok" if ok else f"aliveness {r.status}"
            return Health(self.name, ok, endpoint, detail)
        except Exception as exc:
            return Health(self.name, False, endpoint, f"{type(exc).__name__}")
