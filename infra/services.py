"""The cloud services and the agents as supervised processes of the stack.

infra never imports the services: it runs their console scripts (`pta-sts`, `pta-ca`,
`pta-agent`) with settings in the environment, exactly as an operator would, and
registers the demo agents through the real `pta-agent register` CLI.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg

from infra.certs import StackPki
from infra.demo import Demo, DemoTenant
from infra.ldif import FAILURE_COUNT_INTERVAL_S, MAX_FAILURE
from infra.server import Health, Layout, Program, ServerNotReady, StackError
from infra.waiting import wait_until

# How many agents `make up` registers per tenant (docs/design.md: three for contoso, two for
# fabrikam, so that both multi-agent and cross-tenant behaviour show).
AGENTS_PER_TENANT = {"contoso.test": 3, "fabrikam.test": 2}
STS_LOCKOUT_THRESHOLD = 4
# The first smart lockout outlasts slapd's failure window (ppolicy pwdFailureCountInterval,
# 60 s) with room for a request timeout and a margin, so a burst of 4 and the next guess
# never fall into one directory window: the STS checks this at start-up from the
# PTA_STS_DIRECTORY_LOCKOUT_* settings below (sts.settings).
STS_LOCKOUT_DURATION_S = 120


def _script(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


@dataclass(frozen=True, slots=True)
class AgentSlot:
    """One demo agent: its tenant and state folder."""

    name: str  # supervisor program name, e.g. agent-contoso-1
    tenant: DemoTenant
    state_dir: Path

    def agent_json(self) -> dict[str, str] | None:
        path = self.state_dir / "agent.json"
        if not path.exists():
            return None
        data: dict[str, str] = json.loads(path.read_text())
        return data


class Services:
    """STS (two replicas), CA and agents for one stack."""

    def __init__(
        self,
        layout: Layout,
        demo: Demo,
        pki: StackPki,
        *,
        postgres_dsn: str,
        amqp_url: str,  # the STS's own broker user (never the administrator)
        amqp_public_url: str,
        amqp_management_url: str,
        ldap_url: str,
        public_ip: str = "127.0.0.1",
        sts_https_443: bool = False,
    ) -> None:
        self.layout = layout
        self.ldap_url = ldap_url
        self.public_ip = public_ip
        self.sts_https_443 = sts_https_443
        self.demo = demo
        self.pki = pki
        self.postgres_dsn = postgres_dsn
        self.amqp_url = amqp_url
        self.amqp_public_url = amqp_public_url
        self.amqp_management_url = amqp_management_url
        p = layout.ports
        self.sts_urls = [f"https://{public_ip}:{p.sts}", f"https://{public_ip}:{p.sts2}"]
        self.ca_url = f"https://127.0.0.1:{p.ca}"
        self.crl_url = f"http://127.0.0.1:{p.crl}"
        self.agents = [
            AgentSlot(
                name=f"agent-{t.domain.split('.')[0]}-{i}",
                tenant=t,
                state_dir=layout.state_dir / "agents" / f"{t.domain.split('.')[0]}-{i}",
            )
            for t in demo.tenants
            for i in range(1, AGENTS_PER_TENANT.get(t.domain, 1) + 1)
        ]

    @property
    def sts_url(self) -> str:
        return self.sts_urls[0]

    # -- programs ----------------------------------------------------------------------

    def sts_programs(self) -> list[Program]:
        ports = [self.layout.ports.sts, self.layout.ports.sts2]
        return [
            Program(
                name=f"sts{'' if i == 0 else i + 1}",
                command=[_script("pta-sts")],
                env={
                    # Both replicas share one issuer: tokens from either verify the same.
                    "PTA_STS_PUBLIC_URL": self.sts_url,
                    "PTA_STS_HOST": self.public_ip,
                    "PTA_STS_PORT": str(port),
                    "PTA_STS_TLS_CERT_FILE": str(self.pki.server_cert("sts")),
                    "PTA_STS_TLS_KEY_FILE": str(self.pki.server_key("sts")),
                    "PTA_STS_POSTGRES_DSN": self.postgres_dsn,
                    "PTA_STS_AMQP_URL": self.amqp_url,
                    "PTA_STS_SIGNING_KEY_DIR": str(self.pki.signing_key_dir),
                    "PTA_STS_INSTANCE_ID": f"sts{i + 1}",
                    # Below the directory's own lockout (slapd ppolicy: 5 failures), as the
                    # smart lockout rule of docs/design.md §7 asks, so attackers are stopped
                    # in the cloud before they lock users out on-premises; the STS refuses to
                    # start if the numbers do not guarantee it.
                    "PTA_STS_LOCKOUT_THRESHOLD": str(STS_LOCKOUT_THRESHOLD),
                    "PTA_STS_LOCKOUT_DURATION_S": str(STS_LOCKOUT_DURATION_S),
                    "PTA_STS_DIRECTORY_LOCKOUT_THRESHOLD": str(MAX_FAILURE),
                    "PTA_STS_DIRECTORY_LOCKOUT_WINDOW_S": str(FAILURE_COUNT_INTERVAL_S),
                    # Keys the fingerprints of recent wrong passwords (sts.lockout): a
                    # repeat is answered without reaching slapd, which counts every bind.
                    "PTA_STS_LOCKOUT_SECRET": self.lockout_secret(),
                    # MSAL's user realm call drops the port: replica 1 also serves :443.
                    "PTA_STS_EXTRA_LISTEN": (
                        f"{self.public_ip}:443" if (self.sts_https_443 and i == 0) else ""
                    ),
                },
                stop_wait_s=15,
            )
            for i, port in enumerate(ports)
        ]

    def lockout_secret(self) -> str:
        """The STS replicas' smart lockout secret, made at the first start (mode 0600)."""
        path = self.layout.state_dir / "secrets" / "sts-lockout-secret"
        if not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(48))
        return path.read_text().strip()

    def ca_program(self) -> Program:
        p = self.layout.ports
        return Program(
            name="ca",
            command=[_script("pta-ca")],
            env={
                "PTA_CA_HOST": "127.0.0.1",
                "PTA_CA_PORT": str(p.ca),
                "PTA_CA_CRL_PORT": str(p.crl),
                "PTA_CA_PUBLIC_URL": self.ca_url,
                "PTA_CA_TLS_CERT_FILE": str(self.pki.server_cert("ca")),
                "PTA_CA_TLS_KEY_FILE": str(self.pki.server_key("ca")),
                "PTA_CA_PTA_CA_CERT_FILE": str(self.pki.pta_ca_cert),
                "PTA_CA_PTA_CA_KEY_FILE": str(self.pki.pta_ca_key),
                "PTA_CA_SERVICE_CA_CERT_FILE": str(self.pki.service_ca_cert),
                "PTA_CA_SERVICE_CA_KEY_FILE": str(self.pki.service_ca_key),
                "PTA_CA_POSTGRES_DSN": self.postgres_dsn,
                "PTA_CA_STS_URL": self.sts_url,
                "PTA_CA_STS_CA_BUNDLE": str(self.pki.service_ca_cert),
                "PTA_CA_AMQP_MANAGEMENT_URL": self.amqp_management_url,
                "PTA_CA_AMQP_ADMIN_USER": self.demo.rabbitmq_admin_user,
                "PTA_CA_AMQP_ADMIN_PASSWORD": self.demo.rabbitmq_admin_password,
                "PTA_CA_STS_BROKER_USER": self.demo.rabbitmq_sts_user,
                "PTA_CA_AGENT_AMQP_URL": self.amqp_public_url,
            },
            stop_wait_s=15,
        )

    def agent_programs(self) -> list[Program]:
        """Agents that are registered (a state folder with agent.json)."""
        return [
            Program(
                name=slot.name,
                command=[_script("pta-agent"), "run", "--state-dir", str(slot.state_dir)],
                env=self.agent_env(slot),
                stop_wait_s=20,
            )
            for slot in self.agents
            if slot.agent_json() is not None
        ]

    def ldap_password_file(self, slot: AgentSlot) -> Path:
        return self.layout.state_dir / "agents" / f"{slot.name}.ldap-password"

    def agent_env(self, slot: AgentSlot) -> dict[str, str]:
        """The agent's directory settings: its tenant's subtree and read-only account."""
        t = slot.tenant
        pw_file = self.ldap_password_file(slot)
        if not pw_file.exists():
            pw_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(pw_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(t.service_password)
        return {
            "PTA_AGENT_STATE_DIR": str(slot.state_dir),
            "PTA_AGENT_LDAP_URL": self.ldap_url,
            "PTA_AGENT_LDAP_BIND_DN": t.service_dn,
            "PTA_AGENT_LDAP_BIND_PASSWORD_FILE": str(pw_file),
            "PTA_AGENT_LDAP_BASE_DN": t.people_dn,
            "PTA_AGENT_LDAP_DOMAIN": t.domain,
            "PTA_AGENT_LDAP_LOGIN_ATTRIBUTE": "uid",
            "PTA_AGENT_LDAP_KIND": "openldap",
        }

    def sync_users(self) -> dict[str, str]:
        """Run `pta-agent sync` once per tenant (the first agent of each) after start."""
        done: dict[str, str] = {}
        for slot in self.agents:
            if slot.tenant.domain in done or slot.agent_json() is None:
                continue
            result = subprocess.run(
                [_script("pta-agent"), "sync", "--state-dir", str(slot.state_dir)],
                env={**os.environ, **self.agent_env(slot)},
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            if result.returncode != 0:
                raise StackError(
                    f"pta-agent sync for {slot.name} failed:\n"
                    f"{(result.stdout + result.stderr).strip()[-2000:]}"
                )
            done[slot.tenant.domain] = result.stdout.strip()
        return done

    def cloud_programs(self) -> list[Program]:
        return [*self.sts_programs(), self.ca_program()]

    # -- readiness ---------------------------------------------------------------------

    def _client_ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.pki.service_ca_cert))

    async def wait_ready(self, timeout_s: float) -> None:
        """Ready = each STS serves its OIDC discovery and the CA its configuration."""
        urls = [
            f"{u}/{self.demo.tenants[0].id}/v2.0/.well-known/openid-configuration"
            for u in self.sts_urls
        ] + [f"{self.ca_url}/.well-known/pta-configuration"]
        pending = list(urls)
        async with aiohttp.ClientSession() as http:

            async def all_answer() -> str:
                last = ""
                for url in list(pending):
                    try:
                        async with asyncio.timeout(2):
                            async with http.get(url, ssl=self._client_ssl()) as r:
                                if r.status == 200:
                                    pending.remove(url)
                                else:
                                    last = f"{url} answered {r.status}"
                    except Exception as exc:  # not ready yet: any failure means "try again"
                        last = f"{url}: {type(exc).__name__}"
                return last or ("" if not pending else f"{pending[0]} not ready")

            last = await wait_until(all_answer, timeout_s=timeout_s, interval_s=0.2)
        if last:
            raise ServerNotReady(
                f"services not ready after {timeout_s:.0f} s ({last}); "
                f"see {self.layout.logs_dir}/sts.log and ca.log"
            )

    async def health(self) -> list[Health]:
        out = []
        async with aiohttp.ClientSession() as http:
            for name, url in (
                ("sts", f"{self.sts_urls[0]}/{self.demo.tenants[0].id}/discovery/v2.0/keys"),
                ("sts2", f"{self.sts_urls[1]}/{self.demo.tenants[0].id}/discovery/v2.0/keys"),
                ("ca", f"{self.ca_url}/.well-known/pta-configuration"),
            ):
                try:
                    async with asyncio.timeout(3):
                        async with http.get(url, ssl=self._client_ssl()) as r:
                            ok = r.status == 200
                    out.append(Health(name, ok, url.split("/", 3)[2], f"HTTP {r.status}"))
                except Exception as exc:  # health never raises
                    out.append(Health(name, False, url.split("/", 3)[2], type(exc).__name__))
        return out

    async def wait_agents_active(self, running_since: float, timeout_s: float) -> None:
        """Ready = the CA recorded a heartbeat from every registered agent since it started.

        An agent heartbeats only once it has bootstrapped over mutual TLS and connected to
        its tenant queue, so this is the agent's own end-to-end readiness.
        """
        ids = [a["id"] for a in self.stack_json_agents()]
        silent: list[str] = ids

        async def all_heard() -> str:
            nonlocal silent
            conn = await asyncpg.connect(self.postgres_dsn, timeout=5)
            try:
                rows = await conn.fetch(
                    "SELECT id::text FROM agents WHERE id = ANY($1::uuid[]) "
                    "AND last_heartbeat_at >= to_timestamp($2)",
                    ids,
                    running_since,
                )
            finally:
                await conn.close()
            silent = sorted(set(ids) - {r["id"] for r in rows})
            return ", ".join(silent)

        if not await wait_until(all_heard, timeout_s=timeout_s, interval_s=0.2):
            return
        names = [a["name"] for a in self.stack_json_agents() if a["id"] in silent]
        raise ServerNotReady(
            f"agents not active after {timeout_s:.0f} s: {', '.join(names)}; "
            f"see {self.layout.logs_dir}/<agent>.log"
        )

    async def agent_health(self, heartbeat_interval_s: float = 600) -> list[Health]:
        """Each agent as the CA sees it: active when it reported within two intervals."""
        agents = self.stack_json_agents()
        try:
            conn = await asyncpg.connect(self.postgres_dsn, timeout=3)
            try:
                rows = await conn.fetch(
                    "SELECT id::text, extract(epoch FROM now() - last_heartbeat_at) AS age "
                    "FROM agents WHERE id = ANY($1::uuid[])",
                    [a["id"] for a in agents],
                )
            finally:
                await conn.close()
        except Exception as exc:  # health never raises
            return [Health(a["name"], False, "", type(exc).__name__) for a in agents]
        ages = {r["id"]: r["age"] for r in rows}
        out = []
        for a in agents:
            if a["id"] not in ages:
                out.append(Health(a["name"], False, a["id"], "not registered at the CA"))
                continue
            age = ages[a["id"]]
            is_active = age is not None and age <= 2 * heartbeat_interval_s
            detail = "never reported" if age is None else f"heartbeat {age:.0f} s ago"
            out.append(Health(a["name"], is_active, a["id"], detail))
        return out

    # -- agent registration ------------------------------------------------------------

    def register_missing_agents(self) -> list[str]:
        """Register every demo agent that has no state yet, through the real CLI."""
        registered = []
        for slot in self.agents:
            if slot.agent_json() is not None:
                continue
            slot.state_dir.parent.mkdir(parents=True, exist_ok=True)
            result = subprocess.run(
                [
                    _script("pta-agent"),
                    "register",
                    "--tenant",
                    slot.tenant.domain,
                    "--server",
                    self.ca_url,
                    "--ca-bundle",
                    str(self.pki.service_ca_cert),
                    "--username",
                    slot.tenant.admin_username,
                    "--password-stdin",
                    "--state-dir",
                    str(slot.state_dir),
                    "--host",
                    slot.name,
                ],
                input=slot.tenant.admin_password + "\n",
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if result.returncode != 0:
                raise StackError(
                    f"pta-agent register for {slot.name} failed:\n"
                    f"{(result.stdout + result.stderr).strip()[-2000:]}"
                )
            registered.append(slot.name)
        return registered

    def stack_json_agents(self) -> list[dict[str, str]]:
        out = []
        for slot in self.agents:
            data = slot.agent_json()
            if data is None:
                continue
            out.append(
                {
                    "id": data["agent_id"],
                    "tenant_id": data["tenant_id"],
                    "name": slot.name,
                    "state_dir": str(slot.state_dir),
                }
            )
        return out
