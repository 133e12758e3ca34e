"""A private RabbitMQ node: own node name, ports, Erlang cookie, epmd, data and logs.

Stands in for Azure Service Bus (docs/design.md). Everything the node reads comes from the
environment we give it (docs/servers.md): HOME (cookie), a private epmd on its own port,
distribution bound to 127.0.0.1, the management plugin on its own loopback port.

AMQP is spoken over TLS only (issue 8, finding 13): the one AMQP port is an AMQPS listener
with a certificate from the service TLS CA (`infra.certs`), the CA bundle agents pin at
registration; there is no plain AMQP listener. The management API stays plain HTTP on
loopback (only the CA and the stack's tools use it).

After start, `configure` creates the STS's broker user (no tags, no permissions yet):
the CA grants it its permissions in each tenant's vhost when it creates that vhost
(`ca.broker_admin`), so the STS never holds the administrator's credentials.
"""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path
from urllib.parse import quote

import aio_pika
import aiohttp

from infra.certs import StackPki
from infra.server import Health, Layout, Program, ServerNotReady, StackError
from infra.waiting import wait_until

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
        self,
        layout: Layout,
        pki: StackPki,
        *,
        admin_user: str,
        admin_password: str,
        sts_user: str,
        sts_password: str,
        durable: bool = True,
    ) -> None:
        self.layout = layout
        self.pki = pki
        self.durable = durable
        self.dir = layout.server_dir("rabbitmq")
        self.admin_user = admin_user
        self.admin_password = admin_password
        self.sts_user = sts_user
        self.sts_password = sts_password
        self.ports = layout.ports

    # -- URLs --------------------------------------------------------------------------

    def _url(self, user: str, password: str, vhost: str) -> str:
        # aiormq reads `cafile` from the query: clients verify the broker with the
        # service TLS CA, as agents do with the bundle they pinned.
        return (
            f"amqps://{quote(user, safe='')}:{quote(password, safe='')}"
            f"@127.0.0.1:{self.ports.amqp}/{quote(vhost, safe='')}"
            f"?cafile={quote(str(self.pki.service_ca_cert))}"
        )

    def admin_url(self, vhost: str = "/") -> str:
        """The administrator's AMQPS URL on ``vhost`` (tests and tools; never services)."""
        return self._url(self.admin_user, self.admin_password, vhost)

    @property
    def amqp_url(self) -> str:
        """The administrator's AMQPS URL on the default vhost (stack.json, tools)."""
        return self.admin_url()

    @property
    def sts_amqp_url(self) -> str:
        """The STS's AMQPS URL: its own user, no vhost (it opens one per tenant)."""
        return (
            f"amqps://{quote(self.sts_user, safe='')}:{quote(self.sts_password, safe='')}"
            f"@127.0.0.1:{self.ports.amqp}?cafile={quote(str(self.pki.service_ca_cert))}"
        )

    @property
    def public_amqp_url(self) -> str:
        """The AMQPS URL without credentials (for the CA to hand to agents)."""
        return f"amqps://127.0.0.1:{self.ports.amqp}"

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
                # AMQP over TLS only: no plain listener at all.
                "listeners.tcp = none",
                f"listeners.ssl.default = 127.0.0.1:{self.ports.amqp}",
                f"ssl_options.cacertfile = {self.pki.service_ca_cert}",
                f"ssl_options.certfile = {self.pki.server_cert('rabbitmq')}",
                f"ssl_options.keyfile = {self.pki.server_key('rabbitmq')}",
                # Clients authenticate with user and password; no client certificates.
                "ssl_options.verify = verify_none",
                "ssl_options.fail_if_no_peer_cert = false",
                "ssl_options.versions.1 = tlsv1.3",
                "ssl_options.versions.2 = tlsv1.2",
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
                # test broker is simply killed (docs/servers.md).
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
        async with aiohttp.ClientSession(headers=self._auth()) as http:

            async def answers() -> str:
                try:
                    async with asyncio.timeout(2):
                        async with http.get(f"{self.management_url}/api/overview") as r:
                            if r.status != 200:
                                raise RuntimeError(f"management API answered {r.status}")
                        conn = await aio_pika.connect(self.admin_url())
                        await conn.close()
                except Exception as exc:  # not up yet: any failure means "try again"
                    return f"{type(exc).__name__}: {exc}"
                return ""

            last = await wait_until(answers, timeout_s=timeout_s, interval_s=0.2)
        if not last:
            return
        raise ServerNotReady(
            f"RabbitMQ not ready after {timeout_s:.0f} s ({last}); "
            f"see {self.layout.logs_dir / 'rabbitmq.log'}"
        )

    async def configure(self) -> None:
        """Create (or reset the password of) the STS's broker user: no tags, and no
        permissions here; the CA grants them per tenant vhost."""
        u = quote(self.sts_user, safe="")
        async with aiohttp.ClientSession(headers=self._auth()) as http:
            for method, path, body in (
                ("PUT", f"/api/users/{u}", {"password": self.sts_password, "tags": ""}),
            ):
                async with asyncio.timeout(10):
                    async with http.request(method, self.management_url + path, json=body) as r:
                        if r.status not in (200, 201, 204):
                            raise StackError(
                                f"RabbitMQ management {method} {path}: {r.status} {await r.text()}"
                            )

    async def health(self) -> Health:
        endpoint = self.public_amqp_url
        try:
            async with aiohttp.ClientSession(headers=self._auth()) as http:
                async with asyncio.timeout(3):
                    url = f"{self.management_url}/api/aliveness-test/%2F"
                    async with http.get(url) as r:
                        ok = r.status == 200 and (await r.json()).get("status") == "ok"
                        detail = "aliveness ok" if ok else f"aliveness {r.status}"
            return Health(self.name, ok, endpoint, detail)
        except Exception as exc:
            return Health(self.name, False, endpoint, f"{type(exc).__name__}")
