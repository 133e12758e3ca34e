"""What a load test or benchmark may aim at: the stack described by ``stack.json``.

``load_stack`` reads the stack.json contract (docs/design.md §8) into a frozen
``StackTarget``; ``require_loopback`` refuses every URL whose host is not this machine's
loopback (``127.0.0.0/8``, ``::1``, ``localhost``), so a load test can never be pointed
at someone else's service by a wrong file. Errors are ``TargetError`` with a message
that says what to fix.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "DEFAULT_STACK_JSON",
    "AgentInfo",
    "BulkUsers",
    "NamedUser",
    "StackTarget",
    "TargetError",
    "TenantInfo",
    "is_loopback_host",
    "load_stack",
    "require_loopback",
]

DEFAULT_STACK_JSON = Path(".stack/stack.json")


class TargetError(Exception):
    """The stack to test is not usable: check the stack.json path (`make up` writes it)."""


def is_loopback_host(host: str | None) -> bool:
    """True for ``localhost`` and addresses in 127.0.0.0/8 or ::1 (brackets allowed)."""
    if not host:
        return False
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_loopback(url: str, what: str = "URL") -> str:
    """Return ``url`` if its host is loopback, else raise ``TargetError`` naming it."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises ValueError for a bad port
    except ValueError as exc:
        raise TargetError(f"{what} {url!r} is not a valid URL") from exc
    if parts.scheme not in ("http", "https", "ldap", "ldaps", "amqp", "amqps"):
        raise TargetError(f"{what} {url!r} has an unexpected scheme {parts.scheme!r}")
    if not is_loopback_host(host):
        raise TargetError(
            f"{what} {url!r} is not on this machine's loopback (127.0.0.0/8, ::1, "
            "localhost): load tests only run against a local stack"
        )
    return url


@dataclass(frozen=True, slots=True)
class NamedUser:
    username: str
    password: str
    state: str


@dataclass(frozen=True, slots=True)
class BulkUsers:
    """``user0001@domain`` .. ``userNNNN@domain``, all active with one password."""

    pattern: str  # str.format pattern with {n}, e.g. "user{n:04d}@contoso.test"
    count: int
    password: str

    def username(self, n: int) -> str:
        """The n-th bulk user (1-based)."""
        if not 1 <= n <= self.count:
            raise IndexError(f"bulk user {n} outside 1..{self.count}")
        return self.pattern.format(n=n)


@dataclass(frozen=True, slots=True)
class TenantInfo:
    id: str
    name: str
    domain: str
    base_dn: str
    client_id: str
    users: tuple[NamedUser, ...]
    bulk: BulkUsers
    service_dn: str
    service_password: str

    def named_in_state(self, state: str) -> list[NamedUser]:
        """Named (non-bulk) users in a directory state, e.g. ``password_expired``."""
        bulk_names = {self.bulk.username(n) for n in range(1, self.bulk.count + 1)}
        return [u for u in self.users if u.state == state and u.username not in bulk_names]


@dataclass(frozen=True, slots=True)
class AgentInfo:
    id: str
    tenant_id: str
    name: str  # supervisor program name, e.g. agent-contoso-1
    state_dir: Path


@dataclass(frozen=True, slots=True)
class StackTarget:
    """The parts of stack.json the load tool and the benchmark use, URLs checked."""

    path: Path
    state_dir: Path
    sts_urls: tuple[str, ...]
    ca_bundle: Path
    ldap_url: str
    amqp_url: str
    amqp_sts_url: str  # the STS's broker user: the only publisher agents accept
    amqp_management_url: str
    amqp_admin: tuple[str, str]
    tenants: tuple[TenantInfo, ...]
    agents: tuple[AgentInfo, ...]

    def tenant(self, key: str | None) -> TenantInfo:
        """The tenant by id, domain or name (case-insensitive); the first when None."""
        if key is None:
            return self.tenants[0]
        for t in self.tenants:
            if key.lower() in (t.id, t.domain.lower(), t.name.lower()):
                return t
        known = ", ".join(t.domain for t in self.tenants)
        raise TargetError(f"no tenant {key!r} in {self.path}; known: {known}")

    def agents_of(self, tenant_id: str) -> list[AgentInfo]:
        return [a for a in self.agents if a.tenant_id == tenant_id]


def load_stack(path: Path) -> StackTarget:
    """Read and check a stack.json; raises ``TargetError`` (missing file, missing field,
    a URL off loopback, a CA bundle that does not exist)."""
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise TargetError(f"{path} not found: start the stack with `make up`") from None
    except (OSError, ValueError) as exc:
        raise TargetError(f"{path} is not readable JSON: {exc}") from None
    try:
        sts_urls = tuple(doc.get("sts_urls") or [doc["sts_url"]])
        servers = doc["servers"]
        admin = servers.get("amqp_admin") or {}
        target = StackTarget(
            path=path,
            state_dir=Path(doc.get("state_dir") or path.parent),
            sts_urls=tuple(require_loopback(u.rstrip("/"), "sts_url") for u in sts_urls),
            ca_bundle=Path(doc["ca_bundle"]),
            ldap_url=require_loopback(servers["ldap_url"], "ldap_url"),
            amqp_url=require_loopback(servers["amqp_url"], "amqp_url"),
            amqp_sts_url=require_loopback(servers["amqp_sts_url"], "amqp_sts_url"),
            amqp_management_url=require_loopback(
                servers["amqp_management_url"], "amqp_management_url"
            ),
            amqp_admin=(str(admin.get("username", "")), str(admin.get("password", ""))),
            tenants=tuple(_tenant(t) for t in doc["tenants"]),
            agents=tuple(
                AgentInfo(
                    id=a["id"],
                    tenant_id=a["tenant_id"],
                    name=a.get("name", ""),
                    state_dir=Path(a["state_dir"]),
                )
                for a in doc.get("agents", [])
            ),
        )
    except (KeyError, TypeError) as exc:
        raise TargetError(f"{path} lacks a field the load tool needs: {exc}") from None
    if not target.tenants:
        raise TargetError(f"{path} lists no tenants")
    if not target.ca_bundle.is_file():
        raise TargetError(f"ca_bundle {target.ca_bundle} (from {path}) is not a file")
    return target


def _tenant(t: dict[str, Any]) -> TenantInfo:
    bulk = t["bulk_users"]
    service = t.get("directory_service_account") or {}
    return TenantInfo(
        id=t["id"],
        name=t["name"],
        domain=t["domain"],
        base_dn=t.get("base_dn", ""),
        client_id=t["app"]["client_id"],
        users=tuple(NamedUser(u["username"], u["password"], u["state"]) for u in t["users"]),
        bulk=BulkUsers(
            pattern=bulk["pattern"], count=int(bulk["count"]), password=bulk["password"]
        ),
        service_dn=service.get("dn", ""),
        service_password=service.get("password", ""),
    )
