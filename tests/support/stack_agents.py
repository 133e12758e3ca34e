"""The stack's own registered agents and the environment `pta-agent` needs for a stack
tenant: for tests that drive the real CA and the agent CLI."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from agent import state
from agent.cloud import (
    CaClient,
)
from agent.ldap_directory import LdapDirectorySettings
from infra.demo import DemoTenant
from infra.stack import Stack


@dataclass(frozen=True, slots=True)
class StackAgent:
    agent_id: str
    tenant: DemoTenant
    registration: state.Registration

    def client(self, *, mutual: bool = True) -> CaClient:
        reg = self.registration
        return CaClient(
            reg.record.ca_url,
            ssl_context=reg.mutual_tls() if mutual else reg.server_tls(),
            trust=str(reg.dir.ca_bundle),
            timeout_s=15,
        )


def directory_settings(stack: Stack, tenant: DemoTenant) -> LdapDirectorySettings:
    return LdapDirectorySettings(
        url=stack.ldap_url,
        bind_dn=tenant.service_dn,
        bind_password=tenant.service_password,
        base_dn=tenant.people_dn,
        domain=tenant.domain,
    )


def agent_env(stack: Stack, tenant: DemoTenant, state_dir: Path) -> dict[str, str]:
    """The environment `pta-agent` needs for a stack tenant (as infra sets it)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PTA_AGENT_")}
    return {
        **base,
        "PTA_AGENT_STATE_DIR": str(state_dir),
        "PTA_AGENT_LDAP_URL": stack.ldap_url,
        "PTA_AGENT_LDAP_BIND_DN": tenant.service_dn,
        "PTA_AGENT_LDAP_BIND_PASSWORD": tenant.service_password,
        "PTA_AGENT_LDAP_BASE_DN": tenant.people_dn,
        "PTA_AGENT_LDAP_DOMAIN": tenant.domain,
        "PTA_AGENT_LDAP_LOGIN_ATTRIBUTE": "uid",
        "PTA_AGENT_LDAP_KIND": "openldap",
    }


def pta_agent() -> str:
    return str(Path(sys.executable).with_name("pta-agent"))


def stack_agent(stack: Stack, tenant_index: int, nth: int = 0) -> StackAgent:
    tenant = stack.demo.tenants[tenant_index]
    agents = [
        a
        for a in json.loads(stack.stack_json_path.read_text())["agents"]
        if a["tenant_id"] == tenant.id
    ]
    chosen = agents[nth]
    return StackAgent(chosen["id"], tenant, state.load(Path(chosen["state_dir"])))
