"""Names and constants that the cloud services and the agent must agree on.

Kept in one place so that a rename is one edit. The wire formats of sign-in requests and
replies are in `common.wire`; these are the identifiers around them.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import quote

from yarl import URL

# The first-party public client the agent CLI signs in with (device code or password).
AGENT_CLIENT_ID: Final = "pta-agent"
# Audience of the admin access tokens the CA accepts for registration and deletion.
CA_AUDIENCE: Final = "urn:pta:ca"
CA_SCOPE: Final = f"{CA_AUDIENCE}/.default"
# The role a tenant admin needs to register or delete agents (docs/design.md §3.1).
ADMIN_ROLE: Final = "hybrid_identity_admin"
MAX_AGENTS_PER_TENANT: Final = 40

# Broker names (docs/design.md §3.2 and 3). Each tenant has its own virtual host holding its
# request queue and its own `pta.replies` exchange: RabbitMQ checks no permission on a
# passive declare, so a shared vhost would let one tenant's agent probe another tenant's
# queue (existence, backlog, consumers). Agents get permissions in their tenant's vhost
# only; the STS's broker user in every tenant vhost (docs/architecture.md, "Broker").
REPLY_EXCHANGE: Final = "pta.replies"
# The broker user the STS publishes requests as (the default of the CA's and the stack's
# settings). Requests carry it as the AMQP `user_id`, which RabbitMQ checks against the
# publishing connection's user; agents drop a request with any other `user_id`.
DEFAULT_STS_BROKER_USER: Final = "pta-sts"
# The STS's exclusive reply queue in each tenant vhost: `sts.<instance id>.<12 hex>`.
STS_REPLY_QUEUE_PATTERN: Final = r"sts\.[A-Za-z0-9_-]{1,64}\.[0-9a-f]{12}"


def tenant_vhost(tenant_id: str) -> str:
    """The tenant's virtual host: its queue, its reply exchange, its agents' permissions."""
    return f"pta.{tenant_id}"


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


def vhost_url(amqp_url: str, vhost: str) -> str:
    """``amqp_url`` (scheme, credentials, host, port, query such as ``cafile``) on ``vhost``.

    The vhost is one percent-encoded path segment (RabbitMQ URI spec: "/" is "%2F").
    """
    base = URL(amqp_url)
    moved = base.with_path("/" + quote(vhost, safe=""), encoded=True)
    return str(moved.with_query(base.query) if base.query else moved)
