"""The CA HTTP API's bodies: requests validated at the edge, answers as typed values.

Requests are frozen msgspec Structs that reject unknown fields and wrong types; ``decode``
turns any failure into ``InvalidRequest`` whose message names the field (msgspec's
message never quotes the value). Text that ends up in the database and in admin views
(host names, versions, status detail) must be printable: no control characters, so that
nothing stored here can forge a line in a log or a terminal. Answers are Structs encoded
by ``json_response``; datetimes come out as RFC 3339 UTC (``...Z``).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Final, TypeVar

import msgspec
from aiohttp import web

from ca.errors import InvalidRequest
from common.encoding import is_canonical_uuid

MAX_BODY_BYTES: Final = 64 * 1024
"""Largest request body read at all (a CSR is capped at 8 KiB by ``common.pki``)."""

Host = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
Version = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
AgentStatus = Annotated[
    str, msgspec.Meta(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$")
]
Detail = Annotated[str, msgspec.Meta(max_length=256)]
InstanceId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
"""Random per agent process start (``ca.lifecycle`` clone detection)."""


class RegisterRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /agents/register``: the agent's CSR and where it runs."""

    csr: str
    host: Host
    version: Version
    tenant_id: str | None = None


class BootstrapRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /agents/bootstrap``: the client certificate says who asks; ``instance_id``
    which process of it (optional: agents from before clone detection send ``{}``)."""

    instance_id: InstanceId | None = None


class HeartbeatRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /agents/heartbeat``: the agent's version and how it is doing."""

    version: Version
    status: AgentStatus
    detail: Detail = ""
    instance_id: InstanceId | None = None


class RegisterAnswer(msgspec.Struct, frozen=True):
    agent_id: str
    tenant_id: str
    certificate: str
    ca_certificate: str
    not_after: dt.datetime
    kid: str


class BootstrapAnswer(msgspec.Struct, frozen=True):
    amqp_url: str
    vhost: str
    username: str
    access_key: str
    queue: str
    reply_exchange: str
    publisher: str
    expires_at: dt.datetime
    agent_id: str
    tenant_id: str
    heartbeat_interval_s: int


class HeartbeatAnswer(msgspec.Struct, frozen=True):
    renew: bool
    heartbeat_interval_s: int


class AgentView(msgspec.Struct, frozen=True):
    """An agent as the cloud sees it (``GET /agents/self``, ``GET /agents``)."""

    agent_id: str
    tenant_id: str
    host: str
    version: str
    kid: str
    cert_serial: str
    cert_not_after: dt.datetime
    registered_at: dt.datetime
    last_heartbeat_at: dt.datetime | None
    last_bootstrap_at: dt.datetime | None
    status: str
    reported_status: str
    status_detail: str
    renewal: str = "not_due"  # not_due, due, in_progress, expired (ca.renewal.renewal_state)
    # The lifecycle names (issue 10; outside checks read these): state is active,
    # inactive or suspected_clone (ca.lifecycle.agent_state); certificate_not_after is
    # cert_not_after under its contract name. status/cert_not_after stay for old clients.
    state: str = "inactive"
    certificate_not_after: dt.datetime | None = None
    suspected_clone_at: dt.datetime | None = None


class AgentList(msgspec.Struct, frozen=True):
    agents: list[AgentView]


class Configuration(msgspec.Struct, frozen=True):
    """``GET /.well-known/pta-configuration``: what an agent needs to start registering."""

    authority: str
    client_id: str
    scope: str
    crl_url: str


class ErrorAnswer(msgspec.Struct, frozen=True):
    error: str
    message: str


_T = TypeVar("_T", RegisterRequest, BootstrapRequest, HeartbeatRequest)


def decode(body: bytes, kind: type[_T], *, empty_ok: bool = False) -> _T:
    """Parse a JSON request body into ``kind``; raises InvalidRequest naming the problem."""
    if empty_ok and not body.strip():
        body = b"{}"
    try:
        request = msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"Invalid request body: {exc}.") from exc
    except msgspec.DecodeError as exc:
        raise InvalidRequest("The request body is not a JSON object.") from exc
    for name in ("host", "version", "detail"):
        value = getattr(request, name, None)
        if isinstance(value, str) and not value.isprintable():
            raise InvalidRequest(f"Invalid request body: `{name}` must be printable text.")
    return request


def json_response(answer: msgspec.Struct, *, status: int = 200) -> web.Response:
    """An answer as an ``application/json`` response."""
    return web.Response(
        body=msgspec.json.encode(answer), status=status, content_type="application/json"
    )


# -- POST /agents/sync (ca.sync) -------------------------------------------------------------

MAX_SYNC_BATCH_USERS: Final = 1000
MAX_SYNC_BODY_BYTES: Final = 1024 * 1024
"""A sync batch may be larger than ``MAX_BODY_BYTES``: 1,000 users of up to 256 + 128 +
256 characters. ``ca.sync`` reads it with this limit itself."""

SyncUsername = Annotated[str, msgspec.Meta(min_length=3, max_length=256)]
ImmutableId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
DisplayName = Annotated[str, msgspec.Meta(max_length=256)]


class SyncUser(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One directory user: sign-in name, the directory's immutable id, display name."""

    username: SyncUsername
    immutable_id: ImmutableId
    display_name: DisplayName = ""


class SyncRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /agents/sync``: one batch of a sync run; ``final`` ends the run."""

    sync_id: str
    users: Annotated[list[SyncUser], msgspec.Meta(max_length=MAX_SYNC_BATCH_USERS)]
    final: bool


class SyncAnswer(msgspec.Struct, frozen=True):
    upserted: int
    deleted: int


def decode_sync(body: bytes) -> SyncRequest:
    """Parse a sync batch; raises InvalidRequest naming the problem (never a value).

    Shape only: ``ca.sync.check_batch`` checks the values (lowercase, ``local@domain``,
    printable, no duplicates).
    """
    try:
        request = msgspec.json.decode(body, type=SyncRequest)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"Invalid request body: {exc}.") from exc
    except msgspec.DecodeError as exc:
        raise InvalidRequest("The request body is not a JSON object.") from exc
    if not is_canonical_uuid(request.sync_id):
        raise InvalidRequest("Invalid request body: `sync_id` must be a lowercase hyphenated UUID.")
    return request
