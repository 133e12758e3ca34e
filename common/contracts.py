"""Names and constants that the cloud services and the agent must agree on.

Kept in one place so that a rename is one edit. The wire formats of sign-in requests and
replies are in `common.wire`; these are the identifiers around them.
"""

from __future__ import annotations

from typing import Final

# The first-party public client the agent CLI signs in with (device code or password).
AGENT_CLIENT_ID: Final = "pta-agent"
# Audience of the admin access tokens the CA accepts for registration and deletion.
CA_AUDIENCE: Final = "urn:pta:ca"
CA_SCOPE: Final = f"{CA_AUDIENCE}/.default"
# The role a tenant admin needs to register or delete agents (DESIGN.md flow 1).
ADMIN_ROLE: Final = "hybrid_identity_admin"
MAX_AGENTS_PER_TENANT: Final = 40

# Broker names (DESIGN.md flow 2 and 3).
VHOST: Final = "pta"
REPLY_EXCHANGE: Final = "pta.replies"


def tenant_queue(tenant_id: str) -> str:
    """The one request queue of a tenant, consumed by all its agents."""
    return f"pta.tenant.{tenant_id}"


def agent_broker_user(agent_id: str) -> str:
    return f"agent-{agent_id}"


# The tenant queue is declared by the cloud side only (agents may not configure anything).
# Messages carry their own expiration (the request deadline); the queue adds a bound so a
# tenant with no consumer cannot grow without limit, and rejects publishes past it so the
# STS learns at once instead of the user waiting for a timeout.
TENANT_QUEUE_ARGUMENTS: Final[dict[str, int | str]] = {
    "x-max-length": 10_000,
    "x-overflow": "reject-publish",
}
TENANT_QUEUE_DURABLE: Final = True
