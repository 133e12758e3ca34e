"""The broker as the CA administers it: tenant vhosts, agent users, their permissions.

``BrokerAdmin`` is the boundary (docs/contributing.md §2); ``RabbitManagement`` is the adapter
over the RabbitMQ management HTTP API. Every call has a timeout; every failure to ask
(connection refused, timeout, TLS, an unexpected status) becomes ``BrokerUnavailable``.

Each tenant has its own vhost ``pta.<tenant id>`` (``common.contracts.tenant_vhost``):
RabbitMQ checks no permission on a passive declare, so in a shared vhost one tenant's agent
could learn whether another tenant's queue exists, its backlog and its consumers.
``ensure_tenant`` creates, idempotently, the vhost, the administrator's and the STS
broker user's permissions in it, the ``pta.replies`` exchange and the tenant queue.

Permissions in a tenant's vhost (users have no tags, so none can use the management API):
- an agent (docs/design.md §3.2 step 3): configure ``^$`` (declares nothing), write
  ``^pta\\.replies$`` (publishes replies only), read ``^pta\\.tenant\\.<tenant id>$``
  (consumes its own tenant's queue only); no permission in any other vhost;
- the STS (``sts_permissions``): configure its exclusive reply queues
  ``sts.<instance>.<hex>`` only; write the default exchange (``amq.default``: publishing a
  request to the tenant queue) and its reply queues (``queue.bind`` needs write on the
  queue); read ``pta.replies`` (``queue.bind`` needs read on the exchange) and its reply
  queues (consume). It cannot consume the tenant queue, publish to ``pta.replies``, or
  declare or delete the tenant queue or the exchange (it only passive-declares them).
The tenant id is checked to be a canonical UUID before it goes into a name or a regular
expression, so it cannot widen a pattern or name another vhost.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any, Final, Protocol
from urllib.parse import quote

import aiohttp
import orjson

from ca.errors import BrokerUnavailable
from common.contracts import (
    DEFAULT_STS_BROKER_USER,
    REPLY_EXCHANGE,
    STS_REPLY_QUEUE_PATTERN,
    TENANT_QUEUE_ARGUMENTS,
    TENANT_QUEUE_DURABLE,
    tenant_queue,
    tenant_vhost,
)
from common.encoding import is_canonical_uuid

_OK: Final = frozenset({200, 201, 204})


class BrokerAdmin(Protocol):
    """What the CA needs from the broker."""

    async def put_agent_user(self, username: str, access_key: str, tenant_id: str) -> None:
        """Create or rotate an agent's user and give it its tenant's permissions only.

        Raises BrokerUnavailable.
        """
        ...

    async def delete_user(self, username: str) -> None:
        """Delete a user (no error if it does not exist). Raises BrokerUnavailable."""
        ...

    async def ensure_tenant(self, tenant_id: str) -> None:
        """Create the tenant's vhost, its permissions for the administrator and the STS,
        its reply exchange and its durable request queue (idempotent).

        Raises BrokerUnavailable.
        """
        ...

    async def consumer_count(self, tenant_id: str) -> int | None:
        """Consumers on the tenant's queue, None if the queue does not exist.

        Raises BrokerUnavailable.
        """
        ...


def agent_permissions(tenant_id: str) -> dict[str, str]:
    """The configure/write/read regexes of an agent of ``tenant_id`` (see module docstring).

    Raises ValueError when ``tenant_id`` is not a canonical UUID.
    """
    if not is_canonical_uuid(tenant_id):
        raise ValueError("tenant_id must be a canonical UUID")
    return {
        "configure": "^$",
        "write": "^" + _escape_dots(REPLY_EXCHANGE) + "$",
        "read": "^" + _escape_dots(tenant_queue(tenant_id)) + "$",
    }


def sts_permissions() -> dict[str, str]:
    """The configure/write/read regexes of the STS's user in every tenant vhost (see the
    module docstring): the minimum the dispatcher needs."""
    reply = STS_REPLY_QUEUE_PATTERN
    return {
        "configure": f"^{reply}$",
        "write": f"^(amq\\.default|{reply})$",
        "read": f"^({_escape_dots(REPLY_EXCHANGE)}|{reply})$",
    }


def _vhost_of(tenant_id: str) -> str:
    """The tenant's vhost, percent-encoded for a management API path."""
    if not is_canonical_uuid(tenant_id):
        raise ValueError("tenant_id must be a canonical UUID")
    return quote(tenant_vhost(tenant_id), safe="")


def _escape_dots(name: str) -> str:
    # Names here are [a-z0-9.-] only; '.' is the one regex metacharacter among them.
    return name.replace(".", "\\.")


class RabbitManagement:
    """``BrokerAdmin`` over the RabbitMQ management HTTP API."""

    def __init__(
        self,
        *,
        base_url: str,
        user: str,
        password: str,
        session: aiohttp.ClientSession,
        timeout_s: float,
        sts_user: str = DEFAULT_STS_BROKER_USER,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._session = session
        self._timeout_s = timeout_s
        self._admin_user = quote(user, safe="")
        self._sts_user = quote(sts_user, safe="")
        # aiohttp 3.14 deprecates BasicAuth/auth= (docs/servers.md): build the header here,
        # per request, so a shared session never sends it anywhere else.
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        self._headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}

    async def put_agent_user(self, username: str, access_key: str, tenant_id: str) -> None:
        permissions = agent_permissions(tenant_id)
        vhost = _vhost_of(tenant_id)
        user = quote(username, safe="")
        await self._call("PUT", f"/api/users/{user}", {"password": access_key, "tags": ""})
        await self._call("PUT", f"/api/permissions/{vhost}/{user}", permissions)

    async def delete_user(self, username: str) -> None:
        await self._call("DELETE", f"/api/users/{quote(username, safe='')}", missing_ok=True)

    async def ensure_tenant(self, tenant_id: str) -> None:
        vhost = _vhost_of(tenant_id)
        everything = {"configure": ".*", "write": ".*", "read": ".*"}
        exchange = quote(REPLY_EXCHANGE, safe="")
        queue = quote(tenant_queue(tenant_id), safe="")
        for path, body in (
            (f"/api/vhosts/{vhost}", {"description": "pass-through authentication tenant"}),
            # The administrator declares below through this API, which needs permissions.
            (f"/api/permissions/{vhost}/{self._admin_user}", everything),
            (f"/api/permissions/{vhost}/{self._sts_user}", sts_permissions()),
            (
                f"/api/exchanges/{vhost}/{exchange}",
                {"type": "direct", "durable": True, "auto_delete": False},
            ),
            (
                f"/api/queues/{vhost}/{queue}",
                {
                    "durable": TENANT_QUEUE_DURABLE,
                    "auto_delete": False,
                    "arguments": dict(TENANT_QUEUE_ARGUMENTS),
                },
            ),
        ):
            await self._call("PUT", path, body)

    async def consumer_count(self, tenant_id: str) -> int | None:
        vhost = _vhost_of(tenant_id)
        queue = quote(tenant_queue(tenant_id), safe="")
        found = await self._call("GET", f"/api/queues/{vhost}/{queue}", missing_ok=True)
        if found is None:
            return None
        count = found.get("consumers", 0)
        return count if isinstance(count, int) else 0

    async def _call(
        self, method: str, path: str, body: object = None, *, missing_ok: bool = False
    ) -> dict[str, Any] | None:
        """One management API call; the JSON answer of a GET, else None."""
        data = orjson.dumps(body) if body is not None else None
        try:
            async with asyncio.timeout(self._timeout_s):
                async with self._session.request(
                    method,
                    self._base + path,
                    data=data,
                    headers=self._headers,
                    allow_redirects=False,
                ) as resp:
                    if resp.status == 404 and missing_ok:
                        return None
                    if resp.status not in _OK:
                        reason = (await resp.text())[:200]
                        raise BrokerUnavailable(
                            detail=f"{method} {path.split('/')[2]}: {resp.status} {reason}"
                        )
                    if method == "GET":
                        answer = orjson.loads(await resp.read())
                        return answer if isinstance(answer, dict) else {}
                    return None
        except (aiohttp.ClientError, TimeoutError, OSError, orjson.JSONDecodeError) as exc:
            raise BrokerUnavailable(detail=f"{method}: {type(exc).__name__}") from exc
