"""``POST /agents/sync`` (mutual TLS): an agent tells the cloud its directory's users.

The cloud must know who may sign in (docs/design.md §3.3: the STS answers AADSTS50034 for
an unknown user without asking an agent) and never their passwords. ``pta-agent sync``
(and ``pta-agent run`` periodically) reads the users from the directory and sends them
here in batches of one run (``agent/sync.py``).

Contract (errors render as the API's ``{"error", "message"}``):
- body ``{"sync_id": "<uuid>", "users": [{"username", "immutable_id", "display_name"},
  ...], "final": bool}``, at most ``MAX_SYNC_BATCH_USERS`` users and
  ``MAX_SYNC_BODY_BYTES``; answer ``200 {"upserted": n, "deleted": m}``.
- The agent is authenticated exactly as for bootstrap and heartbeat (``ca.mtls``); the
  tenant is the certificate's, never the body's.
- Each username is lowercase ``local@domain`` (at most 256 characters, printable, no
  spaces) whose domain is a *verified* domain of that tenant; ``immutable_id`` (at most
  128) and ``display_name`` (at most 256) are printable; no username or immutable id
  twice in a batch. A batch with any user outside the tenant's verified domains is
  refused whole (400 ``domain_not_verified``, naming the domains), as is any other bad
  value (400 ``invalid_request``): nothing of a refused batch is written.
- A user is identified by ``(tenant, immutable_id)``: a new one gets a fresh uuid4 ``id``
  (its oid in tokens), an existing one keeps its ``id`` and takes the new username and
  display name, so a renamed user keeps its oid (``queries.upsert_users``).
- ``final: true`` ends the run: the tenant's users this run did not send (and that no
  concurrent run wrote since this one began) are deleted; the run cannot be continued
  afterwards (409 ``sync_conflict``, as for a ``sync_id`` of another agent).
- Batches of one tenant are serialized (advisory lock), each in one transaction.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Final

import structlog
from aiohttp import web

from ca import queries
from ca.bodies import (
    MAX_SYNC_BODY_BYTES,
    SyncAnswer,
    SyncRequest,
    decode_sync,
    json_response,
)
from ca.errors import CaError, InvalidRequest, RequestTooLarge
from ca.mtls import certificate_identity, verified_agent
from ca.resources import AUTHORITY, CLOCK, POOL
from common.usernames import canonical_username

log = structlog.get_logger("ca.sync")

MAX_DOMAINS_SHOWN: Final = 5
READ_CHUNK_BYTES: Final = 64 * 1024


class DomainNotVerified(CaError):
    """Users whose domain is not a verified domain of this agent's tenant were refused and
    nothing of the batch was written: sync only the tenant's verified domains (the
    agent's PTA_AGENT_LDAP_DOMAIN), or verify the domain first."""

    status = 400
    code = "domain_not_verified"


class SyncConflict(CaError):
    """This sync_id belongs to a run that has already finished or to another agent: start
    a new run with a fresh sync_id."""

    status = 409
    code = "sync_conflict"


@dataclass(frozen=True, slots=True)
class Batch:
    """A checked batch, as columns for ``queries.upsert_users``."""

    usernames: list[str]
    immutable_ids: list[str]
    display_names: list[str]

    @property
    def domains(self) -> Counter[str]:
        """Users per domain."""
        return Counter(name.rpartition("@")[2] for name in self.usernames)


def check_batch(request: SyncRequest) -> Batch:
    """The batch's values checked (module docstring); raises InvalidRequest naming the
    field and the user's position, never the value."""
    for index, user in enumerate(request.users):
        where = f"users[{index}]"
        name = user.username
        local, at, domain = name.rpartition("@")
        if name != canonical_username(name):  # the STS looks names up in this form only
            raise InvalidRequest(
                f"Invalid request body: `{where}.username` must be lowercase ASCII."
            )
        if (
            not (local and at and domain)
            or "@" in local
            or not name.isprintable()
            or any(char.isspace() for char in name)
        ):
            raise InvalidRequest(
                f"Invalid request body: `{where}.username` must be local@domain, printable, "
                "without spaces."
            )
        if not user.immutable_id.strip() or not user.immutable_id.isprintable():
            raise InvalidRequest(
                f"Invalid request body: `{where}.immutable_id` must be printable, not blank."
            )
        if not user.display_name.isprintable():
            raise InvalidRequest(
                f"Invalid request body: `{where}.display_name` must be printable text."
            )
    batch = Batch(
        usernames=[user.username for user in request.users],
        immutable_ids=[user.immutable_id for user in request.users],
        display_names=[user.display_name for user in request.users],
    )
    for field, values in (("username", batch.usernames), ("immutable_id", batch.immutable_ids)):
        if len(set(values)) != len(values):
            raise InvalidRequest(
                f"Invalid request body: a `{field}` appears twice in `users`: the directory "
                "entry is ambiguous; send each user once."
            )
    return batch


async def read_body(request: web.Request, limit: int = MAX_SYNC_BODY_BYTES) -> bytes:
    """The request body, up to ``limit`` bytes (above the app-wide limit, which
    ``request.read`` enforces). Raises RequestTooLarge."""
    if request.content_length is not None and request.content_length > limit:
        raise RequestTooLarge()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(READ_CHUNK_BYTES):
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


async def sync_users(request: web.Request) -> web.Response:
    """One batch of a user sync run (module docstring)."""
    now = request.app[CLOCK]()
    identity = certificate_identity(request, request.app[AUTHORITY], now)
    body = decode_sync(await read_body(request))
    batch = check_batch(body)
    structlog.contextvars.bind_contextvars(sync_id=body.sync_id)
    async with request.app[POOL].acquire() as conn, conn.transaction():
        agent = await verified_agent(conn, identity)
        await queries.lock_tenant_users(conn, agent.tenant_id)
        verified = await queries.verified_domains(conn, agent.tenant_id)
        refused = {domain: n for domain, n in batch.domains.items() if domain not in verified}
        if refused:
            raise DomainNotVerified(
                _refused_message(refused), detail=f"{sum(refused.values())} users refused"
            )
        run = await queries.open_user_sync(conn, body.sync_id, agent.tenant_id, agent.id)
        if run is None or run.is_finished:
            raise SyncConflict(detail="finished" if run is not None else "not this agent's")
        created, updated = await queries.upsert_users(
            conn,
            tenant_id=agent.tenant_id,
            agent_id=agent.id,
            sync_id=body.sync_id,
            ids=[str(uuid.uuid4()) for _ in batch.usernames],
            usernames=batch.usernames,
            immutable_ids=batch.immutable_ids,
            display_names=batch.display_names,
        )
        deleted = 0
        if body.final:
            deleted = await queries.finish_user_sync(
                conn, tenant_id=agent.tenant_id, sync_id=body.sync_id, started_at=run.started_at
            )
    log.info(
        "users_synced" if body.final else "users_batch_synced",
        users=len(batch.usernames),
        created=created,
        updated=updated,
        deleted=deleted,
        final=body.final,
    )
    return json_response(SyncAnswer(upserted=created + updated, deleted=deleted))


def _refused_message(refused: dict[str, int]) -> str:
    shown = sorted(refused)[:MAX_DOMAINS_SHOWN]
    listed = ", ".join(f"{domain[:64]} ({refused[domain]} users)" for domain in shown)
    more = f" and {len(refused) - len(shown)} more" if len(refused) > len(shown) else ""
    return (
        f"These domains are not verified domains of this agent's tenant: {listed}{more}. "
        "Nothing of this batch was written: sync only the tenant's verified domains (the "
        "agent's PTA_AGENT_LDAP_DOMAIN), or verify the domain first."
    )
