"""Browser sign-in support: a fake `PasswordValidator` plugged into the STS app, synced
users, and reading a page's form like a browser."""

from __future__ import annotations

import html
import re
import uuid
from dataclasses import dataclass, field

from infra.demo import DemoTenant
from sts.errors import (
    AccountLocked,
    InvalidCredentials,
    LogonHoursInvalid,
    NoAgentAvailable,
    PasswordMustChange,
    UserNotFound,
)
from sts.signin import SignedInUser, SignInContext
from sts.tenants import Tenant
from tests.support.sts_harness import Sts

PASSWORD = "Correct-Horse-9a"
_FORM = re.compile(r'<form method="post" action="([^"]+)">')
_HIDDEN = re.compile(r'<input type="hidden" name="([^"]*)" value="([^"]*)">')


@dataclass
class FakeValidator:
    """Accepts `PASSWORD` for the users it knows; refuses like the agents would."""

    users: dict[str, SignedInUser] = field(default_factory=dict)
    calls: list[tuple[str, SignInContext]] = field(default_factory=list)

    def add(self, t: DemoTenant, uid: str) -> SignedInUser:
        user = SignedInUser(
            id=str(uuid.uuid4()),
            tenant_id=t.id,
            username=f"{uid}@{t.domain}",
            display_name=f"{uid.title()} Test",
            immutable_id=str(uuid.uuid4()),
            agent_id=str(uuid.uuid4()),
        )
        self.users[user.username] = user
        return user

    async def validate(
        self, tenant: Tenant, username: str, password: str, context: SignInContext
    ) -> SignedInUser:
        self.calls.append((username, context))
        local = username.split("@")[0]
        if local == "down":
            raise NoAgentAvailable()
        if local == "maya":
            raise PasswordMustChange()
        if local == "luke":
            raise AccountLocked()
        if local == "ghost":
            raise UserNotFound()
        if local == "owl":
            raise LogonHoursInvalid()
        user = self.users.get(username.lower())
        if user is None or user.tenant_id != tenant.id or password != PASSWORD:
            raise InvalidCredentials()
        return user


async def add_synced_user(sts: Sts, user: SignedInUser) -> None:
    await sts.sql(
        "INSERT INTO users (id, tenant_id, username, immutable_id, display_name) "
        "VALUES ($1, $2, $3, $4, $5)",
        uuid.UUID(user.id),
        uuid.UUID(user.tenant_id),
        user.username,
        user.immutable_id,
        user.display_name,
    )


def form_of(page: str) -> tuple[str, dict[str, str]]:
    """The page's form action and hidden fields (HTML-unescaped, as a browser sends them)."""
    match = _FORM.search(page)
    assert match, page
    fields = {html.unescape(k): html.unescape(v) for k, v in _HIDDEN.findall(page)}
    return html.unescape(match.group(1)), fields
