"""Home-realm discovery: `GET /common/userrealm/{username}?api-version=1.0` (docs/design.md §3.3).

Maps a username's domain to how its tenant signs users in, in Entra's JSON shape, which
MSAL for Python reads before its username/password flow (it only branches on
`account_type == "Federated"`, which we never answer):

    {"ver": "1.0", "account_type": "Managed", "domain_name": "contoso.test",
     "federation_brand_name": "Contoso", "cloud_instance_name": "<sts host>",
     "cloud_audience_urn": "urn:federation:MicrosoftOnline"}

A verified domain of a tenant is `Managed` (pass-through authentication: the password is
checked by the tenant's agents). Anything else, including an unverified domain, a
username without `@` or a malformed domain, is `Unknown` with 200, as Entra answers; the
answer never depends on whether the user exists (no account enumeration), only on the
domain. Lookups go through `sts.tenants.TenantDirectory` (cached per process, misses
too). `api-version` is accepted as sent: only version 1.0 exists.

MSAL builds this URL from the authority's host name and drops its port
(`https://{hostname}/common/userrealm/...`); deployments on a non-default port serve the
same app on 443 as well (`PTA_STS_EXTRA_LISTEN`, see `sts.main`).
"""

from __future__ import annotations

from urllib.parse import urlsplit

import orjson
from aiohttp import web

from sts.correlation import bind_tenant
from sts.errors import TenantNotFound
from sts.settings import SETTINGS
from sts.tenants import TENANTS, parse_segment

CLOUD_AUDIENCE_URN = "urn:federation:MicrosoftOnline"
MAX_USERNAME_CHARS = 256


def realm_document(
    *, domain: str | None, tenant_name: str | None, cloud_instance_name: str
) -> dict[str, str]:
    """The userrealm answer: Managed when `tenant_name` is known, else Unknown."""
    if domain is None or tenant_name is None:
        return {
            "ver": "1.0",
            "account_type": "Unknown",
            "cloud_instance_name": cloud_instance_name,
        }
    return {
        "ver": "1.0",
        "account_type": "Managed",
        "domain_name": domain,
        "federation_brand_name": tenant_name,
        "cloud_instance_name": cloud_instance_name,
        "cloud_audience_urn": CLOUD_AUDIENCE_URN,
    }


def domain_of(username: str) -> str | None:
    """The lowercase domain after the last `@`, or None when there is no usable one."""
    if len(username) > MAX_USERNAME_CHARS or "@" not in username:
        return None
    parsed = parse_segment(username.rpartition("@")[2])
    return parsed if isinstance(parsed, str) else None  # a GUID is not a domain


async def get_userrealm(request: web.Request) -> web.Response:
    """`GET /common/userrealm/{username}`."""
    domain = domain_of(request.match_info["username"])
    tenant_name = None
    if domain is not None:
        try:
            tenant = await request.app[TENANTS].resolve(domain)
        except TenantNotFound:
            pass
        else:
            tenant_name = tenant.name
            bind_tenant(tenant.id)
    host = urlsplit(request.app[SETTINGS].public_url).hostname or ""
    body = realm_document(
        domain=domain if tenant_name is not None else None,
        tenant_name=tenant_name,
        cloud_instance_name=host,
    )
    return web.Response(
        body=orjson.dumps(body),
        content_type="application/json",
        charset="utf-8",
        headers={"Cache-Control": "no-store"},
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/common/userrealm/{username}", get_userrealm, name="userrealm")
