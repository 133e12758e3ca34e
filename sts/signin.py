"""The seam between how a password arrives (token endpoint, sign-in pages) and how it is
checked (smart lockout, dispatch to the tenant's agents, the sign-in log).

Both the password grant (`sts.token`) and the browser flow (`sts.authorize`) call one
`PasswordValidator`; it raises the `sts.errors.GrantError` whose AADSTS code docs/design.md's
table gives for the outcome, or returns the signed-in user. Every call, successful or not,
writes one sign-in log entry and one `sign_in` log line with the correlation id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from sts.tenants import Tenant


@dataclass(frozen=True, slots=True)
class SignInContext:
    """Where a sign-in comes from: for the log, lockout and the answer's ids."""

    correlation_id: str
    client_id: str
    client_ip: str
    flow: str  # "password_grant" | "authorize"


@dataclass(frozen=True, slots=True)
class SignedInUser:
    """A synced user whose password an agent of the tenant has just validated."""

    id: str  # the cloud object id (oid)
    tenant_id: str
    username: str  # the sign-in name, lowercase (uid@domain or mail)
    display_name: str
    immutable_id: str  # the directory's entryUUID / objectGUID
    agent_id: str  # the agent that validated the password


class PasswordValidator(Protocol):
    """Checks a synced user's password through the tenant's agents."""

    async def validate(
        self, tenant: Tenant, username: str, password: str, context: SignInContext
    ) -> SignedInUser:
        """Return the user, or raise the GrantError / ServiceUnavailable for the outcome."""
        ...


PASSWORD_VALIDATOR = web.AppKey("password_validator", PasswordValidator)
