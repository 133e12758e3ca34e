"""The whole dev/test stack in one state folder: bring it up, tear it down, report health.

`up` is idempotent: on a running stack it reports what runs and starts what stopped. It
waits for real readiness (AMQP handshake, `SELECT 1`, an LDAP bind), applies the schema,
seeds the demo tenants and writes `<state>/stack.json` (the contract of docs/design.md).
`down` stops every process it started, checked by pid, and leaves none behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from infra import certs, preflight, stackuser
from infra.demo import Demo, load_or_create
from infra.postgres import Postgres
from infra.rabbitmq import RabbitMQ
from infra.seed import seed_cloud
from infra.server import Health, Layout, Ports, Program, StackError
from infra.services import Services
from infra.slapd import Slapd
from infra.supervisor import Supervisor

DEFAULT_PORT_BASE = 27100
# A server that is healthy answers in seconds; on a busy 2-core machine (a test run beside
# another stack start) a whole stack took up to ~60 s, so the limit leaves room for that.
READY_TIMEOUT_S = 120.0


@dataclass(slots=True)
class UpReport:
    was_running: bool
    started: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0


class Stack:
    """One stack: its layout, servers, supervisor and demo data."""

    def __init__(
        self,
        state_dir: Path,
        port_base: int | None = None,
        *,
        durable: bool = True,
        with_services: bool = True,
        public_ip: str | None = None,
        data_root: Path | None = None,
    ) -> None:
        self.state_dir = state_dir.resolve()
        self.is_root = os.geteuid() == 0
        if self.is_root:
            stackuser.check_state_dir_is_roots(self.state_dir)
        stored = self._load_layout(port_base, public_ip, data_root)
        self.layout = Layout(self.state_dir, Ports.from_base(int(stored["port_base"])))
        self.public_ip = str(stored["public_ip"])
        user_dir = stored["stack_user_dir"]
        # Where PostgreSQL's data lives when it runs as the stack user (root); None: in
        # the state folder, as the invoking user (or a cluster made before issue 9).
        self.stack_user_dir = Path(user_dir) if user_dir else None
        self.durable = durable
        self.demo: Demo = load_or_create(self.state_dir / "demo.json")
        self.pki = certs.StackPki(self.state_dir / "pki")
        self.rabbitmq = RabbitMQ(
            self.layout,
            self.pki,
            admin_user=self.demo.rabbitmq_admin_user,
            admin_password=self.demo.rabbitmq_admin_password,
            sts_user=self.demo.rabbitmq_sts_user,
            sts_password=self.demo.rabbitmq_sts_password,
            durable=durable,
        )
        self.postgres = Postgres(
            self.layout,
            self.demo.postgres_password,
            durable=durable,
            directory=self.stack_user_dir / "postgres" if self.stack_user_dir else None,
        )
        self.slapd = Slapd(self.layout, self.demo)
        self.supervisor = Supervisor(self.layout)
        self.with_services = with_services
        self.services = Services(
            self.layout,
            self.demo,
            self.pki,
            postgres_dsn=self.postgres.dsn(),
            amqp_url=self.rabbitmq.sts_amqp_url,
            amqp_public_url=self.rabbitmq.public_amqp_url,
            amqp_management_url=self.rabbitmq.management_url,
            ldap_url=self.slapd.url,
            public_ip=self.public_ip,
            sts_https_443=bool(stored["sts_https_443"]),
        )

    # -- layout persistence ------------------------------------------------------------

    def _load_layout(
        self, requested: int | None, public_ip: str | None, data_root: Path | None
    ) -> dict[str, Any]:
        """Port base, public address and data folder are fixed at the first `up`.

        They are kept in <state>/layout.json. `public_ip` is the loopback address the STS
        is reached at; `sts_https_443` records whether the STS also listens on that
        address's port 443: MSAL's user realm discovery drops the authority's port
        (msal/authority.py), so an unmodified MSAL password flow needs the STS on 443 as
        Entra is. `stack_user_dir` is the stack user's folder (infra.stackuser).
        """
        path = self.state_dir / "layout.json"
        if not self.state_dir.exists():
            # Private: nothing in it is for another user (the stack user's data is not
            # in it), so the checkout's own modes never need widening.
            self.state_dir.mkdir(parents=True)
            self.state_dir.chmod(0o700)
        if path.exists():
            stored: dict[str, Any] = json.loads(path.read_text())
            stored.setdefault("public_ip", "127.0.0.1")
            stored.setdefault("sts_https_443", False)
            if requested is not None and requested != stored["port_base"]:
                raise StackError(
                    f"{self.state_dir} was created with --port-base {stored['port_base']}; "
                    f"run `pta-stack down --purge` to start afresh with other ports"
                )
        else:
            ip = public_ip or "127.0.0.1"
            stored = {
                "port_base": requested if requested is not None else DEFAULT_PORT_BASE,
                "public_ip": ip,
                "sts_https_443": preflight.can_bind(ip, 443),
            }
        user_dir = self._stack_user_dir(stored, data_root)
        if "stack_user_dir" not in stored or stored["stack_user_dir"] != user_dir:
            stored["stack_user_dir"] = user_dir
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(stored) + "\n")
            os.replace(tmp, path)  # atomic: other stacks read it (stackuser.collect_orphans)
        return stored

    def _stack_user_dir(self, stored: dict[str, Any], data_root: Path | None) -> str | None:
        """The stack user's folder to record in layout.json (None: in the state folder).

        The recorded folder stays, unless a data root is asked for and the recorded one,
        elsewhere, holds no cluster yet (the fix after StackUserCannotWrite).
        """
        if not self.is_root:
            return None  # PostgreSQL runs as the invoking user, in the state folder
        if "stack_user_dir" not in stored:
            if (self.state_dir / "postgres" / "data" / "PG_VERSION").exists():
                return None  # a cluster from before issue 9, where its user could reach it
        elif stored["stack_user_dir"] is None:
            return None
        elif data_root is None or Path(stored["stack_user_dir"]).parent == data_root:
            return str(stored["stack_user_dir"])
        elif stackuser.has_cluster(Path(stored["stack_user_dir"])):
            return str(stored["stack_user_dir"])
        return str(stackuser.choose(data_root or stackuser.DEFAULT_ROOT, self.state_dir))

    # -- URLs ------------------------------------------------------------------------

    @property
    def ldap_url(self) -> str:
        return self.slapd.url

    @property
    def amqp_url(self) -> str:
        return self.rabbitmq.amqp_url

    @property
    def postgres_dsn(self) -> str:
        return self.postgres.dsn()

    # -- programs ----------------------------------------------------------------------

    @property
    def servers(self) -> list[RabbitMQ | Postgres | Slapd]:
        return [self.rabbitmq, self.postgres, self.slapd]

    def server_programs(self) -> list[Program]:
        return [program for server in self.servers for program in server.programs()]

    def programs(self) -> list[Program]:
        """Everything the supervisor runs once the stack is fully up."""
        if not self.with_services:
            return self.server_programs()
        return [
            *self.server_programs(),
            *self.services.cloud_programs(),
            *self.services.agent_programs(),
        ]

    # -- lifecycle ---------------------------------------------------------------------

    async def up(self, *, install_packages: bool = True) -> UpReport:
        """Start what is not running, wait for readiness, configure, write stack.json.

        Order: servers (ready, schema, seed) → STS and CA → agents registered through
        `pta-agent register` → agents started. Each step is idempotent.
        """
        t0 = time.monotonic()
        if install_packages:
            preflight.ensure_packages()
        report = UpReport(was_running=self.supervisor.is_running())
        if not report.was_running and self.stack_user_dir is not None:
            # Before anything starts: the error names the folder and the fix.
            stackuser.prepare(self.stack_user_dir, self.state_dir, durable=self.durable)
        try:
            if report.was_running:
                report.started += self._start_missing(self.programs())
            else:
                preflight.check_ports_free(self.layout.ports.listening())
                await asyncio.gather(
                    *(asyncio.to_thread(s.prepare) for s in self.servers),
                    asyncio.to_thread(
                        certs.ensure,
                        self.pki.dir,
                        ips=sorted({"127.0.0.1", self.public_ip}),
                        crl_url=self.services.crl_url,
                    ),
                )
                self.supervisor.start(self.server_programs())
                report.started = [p.name for p in self.server_programs()]
            await asyncio.gather(*(s.wait_ready(READY_TIMEOUT_S) for s in self.servers))
            for server in self.servers:
                await server.configure()
            await self._seed()
            if self.with_services:
                # programs() lists only agents already registered: never a config that
                # drops a running program (supervisorctl update would stop it).
                report.started += self._start_missing(self.programs())
                await self.services.wait_ready(READY_TIMEOUT_S)
                await asyncio.to_thread(self.services.register_missing_agents)
                agents_since = time.time()
                started_agents = self._start_missing(self.programs())
                report.started += started_agents
                if any(name.startswith("agent-") for name in started_agents):
                    await self.services.wait_agents_active(agents_since, READY_TIMEOUT_S)
                    # The cloud learns who may sign in (docs/design.md §3.3): one sync per
                    # tenant now; running agents repeat it on their own schedule.
                    await asyncio.to_thread(self.services.sync_users)
        except BaseException:
            if not report.was_running:
                self.supervisor.shutdown()  # a failed first start leaves nothing running
            raise
        report.started = list(dict.fromkeys(report.started))  # each name once, in order
        self.write_stack_json()
        report.elapsed_s = time.monotonic() - t0
        return report

    def _start_missing(self, programs: list[Program]) -> list[str]:
        """Add these programs to the running supervisor, start any not running.

        Returns the programs that were not RUNNING before: started now by us, or by
        supervisord's autostart when `update` added them.
        """
        before = self.supervisor.states()
        self.supervisor.update(programs)
        now = self.supervisor.states()
        started = []
        for prog in programs:
            was = before.get(prog.name)
            if was is None or was.state != "RUNNING":
                started.append(prog.name)
            st = now.get(prog.name)
            if st is None or st.state not in ("RUNNING", "STARTING"):
                self.supervisor.start_program(prog.name)
        return started

    async def _seed(self) -> None:
        conn = await asyncpg.connect(self.postgres.dsn(), timeout=10)
        try:
            await seed_cloud(conn, self.demo)
        finally:
            await conn.close()

    def down(self) -> list[int]:
        """Stop everything; returns the pids stopped. The data stays for the next `up`."""
        return self.supervisor.shutdown()

    def purge(self) -> list[int]:
        """Stop everything, then delete the stack user's folder and the state folder.

        A stack user's folder that another stack took over (the state folder was copied
        or moved, see infra.stackuser) is left to it.
        """
        pids = self.down()
        if self.stack_user_dir is not None:
            stackuser.remove(self.stack_user_dir, self.state_dir)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        return pids

    async def status(self) -> list[Health]:
        """Health of every component (servers answer their protocol; processes by state)."""
        if not self.supervisor.is_running():
            return [Health(s.name, False, "", "not running (pta-stack up)") for s in self.servers]
        healths = list(await asyncio.gather(*(s.health() for s in self.servers)))
        if self.with_services:
            healths += await self.services.health()
            healths += await self.services.agent_health()
        return healths

    # -- the contract ------------------------------------------------------------------

    @property
    def stack_json_path(self) -> Path:
        return self.state_dir / "stack.json"

    def stack_json(self) -> dict[str, Any]:
        """The stack.json document (docs/design.md §8): URLs, CA bundle, demo logins."""
        p = self.layout.ports
        return {
            "sts_url": self.services.sts_url,
            "sts_urls": self.services.sts_urls,
            "ca_url": self.services.ca_url,
            "crl_url": self.services.crl_url,
            "ca_bundle": str(self.pki.service_ca_cert),
            "pta_ca": str(self.pki.pta_ca_cert),
            "state_dir": str(self.state_dir),
            "servers": {
                "amqp_url": self.rabbitmq.amqp_url,
                # The STS's own broker user (no vhost: one per tenant, pta.<tenant id>).
                "amqp_sts_url": self.rabbitmq.sts_amqp_url,
                "amqp_management_url": self.rabbitmq.management_url,
                "amqp_admin": {
                    "username": self.demo.rabbitmq_admin_user,
                    "password": self.demo.rabbitmq_admin_password,
                },
                "postgres_dsn": self.postgres.dsn(),
                "postgres_admin_dsn": self.postgres.admin_dsn,
                "ldap_url": self.slapd.url,
                "ldaps_url": self.slapd.ldaps_url,
                "ldap_admin": {
                    "dn": self.demo.ldap_admin_dn,
                    "password": self.demo.ldap_admin_password,
                },
            },
            "ports": p.listening(),
            "logs_dir": str(self.layout.logs_dir),
            "tenants": [
                {
                    "id": t.id,
                    "name": t.name,
                    "domain": t.domain,
                    "base_dn": t.base_dn,
                    "directory_service_account": {
                        "dn": t.service_dn,
                        "password": t.service_password,
                    },
                    "admin": {"username": t.admin_username, "password": t.admin_password},
                    "app": {"client_id": t.app_client_id, "redirect_uri": t.app_redirect_uri},
                    # Named users in every state, then the bulk users (all active) so that a
                    # reader of `users` alone sees every account it may sign in with.
                    "users": [
                        {"username": u.username, "password": u.password, "state": str(u.state)}
                        for u in t.users
                    ]
                    + [
                        {
                            "username": f"{t.bulk_uid(n)}@{t.domain}",
                            "password": t.bulk_password,
                            "state": "active",
                        }
                        for n in range(1, t.bulk_count + 1)
                    ],
                    "bulk_users": {
                        "first": f"{t.bulk_uid(1)}@{t.domain}",
                        "last": f"{t.bulk_uid(t.bulk_count)}@{t.domain}",
                        "pattern": f"{t.bulk_prefix}{{n:04d}}@{t.domain}",
                        "count": t.bulk_count,
                        "password": t.bulk_password,
                        "state": "active",
                    },
                }
                for t in self.demo.tenants
            ],
            "agents": self.services.stack_json_agents(),
        }

    def write_stack_json(self) -> None:
        """Write stack.json atomically with mode 0600 (it holds the demo credentials)."""
        tmp = self.stack_json_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.stack_json(), f, indent=2)
            f.write("\n")
        os.replace(tmp, self.stack_json_path)
