"""Client applications: who may ask for tokens at a tenant's endpoints.

Two kinds: the first-party public client `pta-agent` (the agent CLI, valid in every
tenant, `common.contracts.AGENT_CLIENT_ID`), and the tenant's own app registrations
(`apps`, looked up by client id within the tenant only). Only public clients are served
for now: a confidential app would have to authenticate, which is not implemented, so it is
refused with AADSTS7000218 rather than served without its secret.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from common.contracts import AGENT_CLIENT_ID
from sts.errors import ClientAuthenticationRequired, UnknownClient
from sts.queries import Database
from sts.tenants import Tenant

AGENT_CLIENT_NAME = "PTA authentication agent"


@dataclass(frozen=True, slots=True)
class Client:
    """A client allowed to use this tenant's endpoints. `client_id` is canonical."""

    client_id: str
    name: str


async def resolve_client(db: Database, tenant: Tenant, client_id: str) -> Client:
    """The client `client_id` of `tenant`.

    Raises UnknownClient (AADSTS700016) when it is neither `pta-agent` nor an app of this
    tenant, ClientAuthenticationRequired (AADSTS7000218) for a confidential app.
    """
    if client_id == AGENT_CLIENT_ID:
        return Client(AGENT_CLIENT_ID, AGENT_CLIENT_NAME)
    try:
        parsed = uuid.UUID(client_id)
    except ValueError:
        parsed = None
    app = None if parsed is None else await db.app_by_client_id(tenant.uuid, parsed)
    if app is None:
        raise UnknownClient(
            f"Application with identifier '{client_id}' was not found in the directory "
            f"'{tenant.name}'. Check the client_id, and that the app is registered in this "
            "tenant."
        )
    if not app.is_public:
        raise ClientAuthenticationRequired()
    return Client(str(app.client_id), app.name)
