"""The device authorization grant, device side (RFC 8628), used by `pta-agent register`.

`POST /{tenant}/oauth2/v2.0/devicecode` with `client_id` and `scope` answers
`{"device_code", "user_code", "verification_uri", "expires_in", "interval", "message"}`.
- `device_code`: 256 random bits; only its SHA-256 is stored (`device_codes`), so the
  table cannot be used to redeem anything (high entropy makes a plain hash enough).
- `user_code`: 8 characters from 20 consonants (RFC 8628 section 6.1: no vowels, so no
  words; nothing ambiguous like 0/O or 1/I); about 2.6e10 codes. Case and `-`/spaces are
  ignored when typed. A collision with a live code is redrawn.
- `verification_uri` is `{public_url}/devicelogin` (tenant-less, like Entra's); the code
  tells which tenant and client it is for. The person approves there (`sts.devicelogin`).

Polling is the token endpoint with `grant_type=urn:ietf:params:oauth:grant-type:device_code`
(`redeem`). Every state is stored, so any replica answers any poll:
- unknown, already used, another tenant's or another client's code: invalid_grant 70000;
- expired: `expired_token` 70019; declined: `access_denied` 65004;
- not decided yet: `authorization_pending` 70016, or `slow_down` when this poll came less
  than 80% of the interval after the previous one (RFC 8628 section 3.5; the margin keeps
  a client that sleeps exactly `interval` from tripping it on clock jitter);
- approved: tokens for the approving admin, as they are now (roles re-read), and the
  code is deleted in the same transaction: it is single-use.
Final states are reported once; the row is gone afterwards (a later poll is 70000).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass
from typing import Final

import orjson
import structlog
from aiohttp import web

from sts.admins import Admin, AdminVerifier
from sts.clients import Client, resolve_client
from sts.errors import (
    NO_STORE,
    AuthorizationDeclined,
    AuthorizationPending,
    DeviceCodeExpired,
    InvalidDeviceCode,
    ServerError,
    SlowDown,
)
from sts.forms import CLIENT_ID_MAX, SCOPE_MAX, read_form
from sts.issuance import Scope, parse_scope
from sts.queries import Database
from sts.tenants import Tenant, tenant_of

USER_CODE_ALPHABET: Final = "BCDFGHJKLMNPQRSTVWXZ"
USER_CODE_LENGTH: Final = 8
SLOW_DOWN_FRACTION: Final = 0.8
_DRAWS: Final = 5


def new_user_code() -> str:
    """A fresh user code, uniformly random over the alphabet."""
    return "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(USER_CODE_LENGTH))


def normalize_user_code(typed: str) -> str | None:
    """The stored form of a typed code (upper case, no `-` or spaces), or None if invalid."""
    code = typed.replace("-", "").replace(" ", "").upper()
    if len(code) != USER_CODE_LENGTH or any(c not in USER_CODE_ALPHABET for c in code):
        return None
    return code


def hash_device_code(device_code: str) -> str:
    """What is stored for a device code: hex SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(device_code.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class DeviceFlow:
    """The device flow's dependencies and settings."""

    db: Database
    admins: AdminVerifier
    public_url: str
    lifetime_s: int
    interval_s: int

    @property
    def verification_uri(self) -> str:
        return f"{self.public_url}/devicelogin"


DEVICE_FLOW = web.AppKey("device_flow", DeviceFlow)


async def post_devicecode(request: web.Request) -> web.Response:
    """`POST /{tenant}/oauth2/v2.0/devicecode`: start a device flow (RFC 8628 section 3.1)."""
    flow = request.app[DEVICE_FLOW]
    tenant = await tenant_of(request)
    form = await read_form(request, {"client_id": CLIENT_ID_MAX, "scope": SCOPE_MAX})
    client = await resolve_client(flow.db, tenant, form.require("client_id"))
    scope = parse_scope(form.get("scope"), client.client_id)
    device_code = secrets.token_urlsafe(32)
    for _ in range(_DRAWS):
        user_code = new_user_code()
        is_stored = await flow.db.insert_device_code(
            device_code_hash=hash_device_code(device_code),
            user_code=user_code,
            tenant_id=tenant.uuid,
            client_id=client.client_id,
            scope=scope.canonical,
            lifetime=dt.timedelta(seconds=flow.lifetime_s),
        )
        if is_stored:
            break
    else:  # five collisions in a 2.6e10 space means the table is full of live codes
        raise ServerError("Could not allocate a user code. Try again later.")
    structlog.get_logger(__name__).info(
        "device_code_issued", client_id=client.client_id, expires_in=flow.lifetime_s
    )
    body = {
        "device_code": device_code,
        "user_code": user_code,
        "verification_uri": flow.verification_uri,
        "expires_in": flow.lifetime_s,
        "interval": flow.interval_s,
        "message": (
            f"To sign in, use a web browser to open the page {flow.verification_uri} "
            f"and enter the code {user_code} to authenticate."
        ),
    }
    return web.Response(
        body=orjson.dumps(body), content_type="application/json", charset="utf-8", headers=NO_STORE
    )


async def redeem(
    flow: DeviceFlow, tenant: Tenant, client: Client, device_code: str
) -> tuple[Admin, Scope]:
    """The admin who approved `device_code`, and the scope it was issued for.

    Raises InvalidDeviceCode, DeviceCodeExpired, AuthorizationDeclined, SlowDown or
    AuthorizationPending (see the module docstring).
    """
    poll = await flow.db.poll_device_code(
        device_code_hash=hash_device_code(device_code),
        tenant_id=tenant.uuid,
        client_id=client.client_id,
    )
    if poll is None:
        raise InvalidDeviceCode()
    if poll.is_expired:
        raise DeviceCodeExpired()
    if poll.is_denied:
        raise AuthorizationDeclined()
    if poll.approved_admin is None:
        since = poll.seconds_since_last_poll
        if since is not None and since < flow.interval_s * SLOW_DOWN_FRACTION:
            raise SlowDown()
        raise AuthorizationPending()
    admin = await flow.admins.by_id(tenant.uuid, poll.approved_admin)
    if admin is None:  # deleted between approval and redemption
        raise InvalidDeviceCode()
    return admin, parse_scope(poll.scope, client.client_id)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/{tenant}/oauth2/v2.0/devicecode", post_devicecode, name="devicecode")
