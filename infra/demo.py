"""The demo tenants, directory users and credentials that `pta-stack up` seeds.

Generated once per state folder with fresh random passwords and ids, then kept in
`<state>/demo.json` (mode 0600) so that a second `up` and every tool see the same values.
The same data fills the directory (infra.slapd), the cloud database and stack.json.
"""

from __future__ import annotations

import json
import os
import secrets
import uuid
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

from common.contracts import DEFAULT_STS_BROKER_USER

BULK_USERS_PER_TENANT = 1000


class UserState(StrEnum):
    """A directory user's state, as docs/design.md lists them."""

    ACTIVE = "active"
    PASSWORD_EXPIRED = "password_expired"  # noqa: S105 - a state name, not a password
    MUST_CHANGE_PASSWORD = "must_change_password"  # noqa: S105 - a state name
    ACCOUNT_LOCKED = "account_locked"
    ACCOUNT_DISABLED = "account_disabled"


@dataclass(frozen=True, slots=True)
class DemoUser:
    uid: str  # the directory's uid; the sign-in name is uid@domain
    username: str
    password: str
    state: UserState
    display_name: str


@dataclass(frozen=True, slots=True)
class DemoTenant:
    id: str
    name: str
    domain: str
    base_dn: str  # the tenant's directory subtree, e.g. dc=contoso,dc=test
    service_dn: str  # read-only service account the agents search with
    service_password: str
    admin_username: str  # cloud-only admin with role hybrid_identity_admin
    admin_password: str
    app_client_id: str
    app_redirect_uri: str
    users: tuple[DemoUser, ...]
    bulk_prefix: str  # bulk users are <prefix>0001 .. <prefix>NNNN, all active
    bulk_count: int
    bulk_password: str

    @property
    def people_dn(self) -> str:
        return f"ou=people,{self.base_dn}"

    def bulk_uid(self, n: int) -> str:
        return f"{self.bulk_prefix}{n:04d}"


@dataclass(frozen=True, slots=True)
class Demo:
    tenants: tuple[DemoTenant, ...]
    ldap_admin_dn: str  # the directory's rootdn (seeding and tests only)
    ldap_admin_password: str
    postgres_password: str
    rabbitmq_admin_user: str
    rabbitmq_admin_password: str
    # The STS's own broker user (issue 8, finding 9): never the administrator.
    rabbitmq_sts_user: str
    rabbitmq_sts_password: str


def _password() -> str:
    # Mixed classes so that any password quality policy accepts it.
    return "Pw-" + secrets.token_urlsafe(12) + "9a"


_NAMED_USERS: tuple[tuple[str, str, UserState], ...] = (
    ("alice", "Alice Active", UserState.ACTIVE),
    ("bob", "Bob Active", UserState.ACTIVE),
    ("erin", "Erin Expired", UserState.PASSWORD_EXPIRED),
    ("maya", "Maya MustChange", UserState.MUST_CHANGE_PASSWORD),
    ("luke", "Luke Locked", UserState.ACCOUNT_LOCKED),
    ("dora", "Dora Disabled", UserState.ACCOUNT_DISABLED),
)


def _tenant(name: str, domain: str) -> DemoTenant:
    base_dn = ",".join(f"dc={part}" for part in domain.split("."))
    users = tuple(
        DemoUser(
            uid=uid,
            username=f"{uid}@{domain}",
            password=_password(),
            state=state,
            display_name=display,
        )
        for uid, display, state in _NAMED_USERS
    )
    return DemoTenant(
        id=str(uuid.uuid4()),
        name=name,
        domain=domain,
        base_dn=base_dn,
        service_dn=f"cn=pta-reader,{base_dn}",
        service_password=_password(),
        admin_username=f"admin@{domain}",
        admin_password=_password(),
        app_client_id=str(uuid.uuid4()),
        app_redirect_uri="http://localhost:8400/callback",
        users=users,
        bulk_prefix="user",
        bulk_count=BULK_USERS_PER_TENANT,
        bulk_password=_password(),
    )


def generate() -> Demo:
    """Fresh demo data with random ids and passwords."""
    return Demo(
        tenants=(_tenant("Contoso", "contoso.test"), _tenant("Fabrikam", "fabrikam.test")),
        ldap_admin_dn="cn=admin,dc=test",
        ldap_admin_password=_password(),
        postgres_password=_password(),
        rabbitmq_admin_user="pta-admin",
        rabbitmq_admin_password=_password(),
        rabbitmq_sts_user=DEFAULT_STS_BROKER_USER,
        rabbitmq_sts_password=_password(),
    )


def _from_json(data: dict[str, object]) -> Demo:
    tenants = []
    for t in data["tenants"]:  # type: ignore[attr-defined]
        users = tuple(DemoUser(**{**u, "state": UserState(u["state"])}) for u in t["users"])
        tenants.append(DemoTenant(**{**t, "users": users}))
    rest = {k: v for k, v in data.items() if k != "tenants"}
    return Demo(tenants=tuple(tenants), **rest)  # type: ignore[arg-type]


def load_or_create(path: Path) -> Demo:
    """Read the demo data of a state folder, creating it (mode 0600) on first use.

    A state folder from before the STS had its own broker user gets one, written back.
    """
    if path.exists():
        data = json.loads(path.read_text())
        if "rabbitmq_sts_user" not in data:
            data["rabbitmq_sts_user"] = DEFAULT_STS_BROKER_USER
            data["rabbitmq_sts_password"] = _password()
            demo = _from_json(data)
            _write(path, demo, replace=True)
            return demo
        return _from_json(data)
    demo = generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    _write(path, demo, replace=False)
    return demo


def _write(path: Path, demo: Demo, *, replace: bool) -> None:
    target = path.with_suffix(".tmp") if replace else path
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(demo), f, indent=2)
    if replace:
        os.replace(target, path)
