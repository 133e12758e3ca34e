"""An agent's life after registration: bootstrap, heartbeats, and how admins see agents.

- ``POST /agents/bootstrap`` (mutual TLS, docs/design.md §3.2): a fresh random access key
  (32 bytes, URL-safe base64) for the agent's broker user, created or rotated with
  permissions in its own tenant's vhost only (``ca.broker_admin``, which also makes sure
  the vhost, exchange and queue exist); the previous key stops working for new
  connections at once. ``publisher`` names the STS's broker user: the only publisher
  whose requests the agent handles (RabbitMQ checks a message's ``user_id``). The agent
  row stays locked while the broker user changes, so a concurrent ``DELETE /agents/{id}``
  cannot leave a user behind. ``expires_at`` tells the agent when to bootstrap again;
  RabbitMQ's internal users cannot expire by themselves, so the date is a contract with
  the agent, not enforced by the broker.
- ``POST /agents/heartbeat`` (mutual TLS, docs/design.md §3.4): records the time, version and
  reported status; answers whether to renew (``renew_before_days`` before expiry).
- ``GET /agents/self`` (mutual TLS) and ``GET /agents`` (bearer admin, the token's tenant
  only): agents as the cloud sees them, ``status`` ``active`` when a heartbeat arrived
  within two intervals, else ``inactive`` (an agent that never reported is inactive);
  ``renewal`` is the certificate's renewal state (``ca.renewal.renewal_state``).
"""

from __future__ import annotations

import datetime as dt
import secrets

import structlog
from aiohttp import web

from ca import lifecycle, queries, renewal
from ca.bodies import (
    AgentList,
    AgentView,
    BootstrapAnswer,
    BootstrapRequest,
    HeartbeatAnswer,
    HeartbeatRequest,
    decode,
    json_response,
)
from ca.mtls import certificate_identity, verified_agent
from ca.queries import AgentRecord
from ca.resources import AUTHORITY, BROKER, CLOCK, POOL, SETTINGS, VERIFIER
from common.contracts import REPLY_EXCHANGE, agent_broker_user, tenant_queue, tenant_vhost

log = structlog.get_logger("ca.bootstrap")

ACCESS_KEY_BYTES = 32


def new_access_key() -> str:
    """A broker password: 256 random bits, URL-safe base64 (no padding)."""
    return secrets.token_urlsafe(ACCESS_KEY_BYTES)


def agent_status(agent: AgentRecord, *, now: dt.datetime, heartbeat_interval_s: int) -> str:
    """``active`` if the agent reported within two heartbeat intervals, else ``inactive``."""
    if agent.last_heartbeat_at is None:
        return "inactive"
    silent = now - agent.last_heartbeat_at
    return "active" if silent <= dt.timedelta(seconds=2 * heartbeat_interval_s) else "inactive"


def agent_view(
    agent: AgentRecord,
    *,
    now: dt.datetime,
    heartbeat_interval_s: int,
    renew_before_days: int = 30,
    renewing: bool = False,
) -> AgentView:
    return AgentView(
        agent_id=agent.id,
        tenant_id=agent.tenant_id,
        host=agent.host,
        version=agent.version,
        kid=agent.kid,
        cert_serial=agent.cert_serial,
        cert_not_after=agent.cert_not_after,
        registered_at=agent.registered_at,
        last_heartbeat_at=agent.last_heartbeat_at,
        last_bootstrap_at=agent.last_bootstrap_at,
        status=agent_status(agent, now=now, heartbeat_interval_s=heartbeat_interval_s),
        reported_status=agent.reported_status,
        status_detail=agent.status_detail,
        renewal=renewal.renewal_state(
            agent, now=now, renew_before_days=renew_before_days, pending=renewing
        ),
        state=lifecycle.agent_state(agent, now=now, heartbeat_interval_s=heartbeat_interval_s),
        certificate_not_after=agent.cert_not_after,
        suspected_clone_at=agent.suspected_clone_at,
    )


async def bootstrap(request: web.Request) -> web.Response:
    """Hand the agent fresh broker credentials for its own tenant's queue."""
    settings = request.app[SETTINGS]
    now = request.app[CLOCK]()
    identity = certificate_identity(request, request.app[AUTHORITY], now)
    body = decode(await request.read(), BootstrapRequest, empty_ok=True)
    broker = request.app[BROKER]
    username = agent_broker_user(identity.agent_id)
    access_key = new_access_key()
    async with request.app[POOL].acquire() as conn, conn.transaction():
        agent = await verified_agent(conn, identity, lock=True)
        revoked = await lifecycle.note_instance(
            conn,
            broker,
            agent,
            body.instance_id,
            now=now,
            window_s=lifecycle.clone_window_s(request.app),
        )
        if not revoked:
            await broker.ensure_tenant(agent.tenant_id)
            await broker.put_agent_user(username, access_key, agent.tenant_id)
            await queries.record_bootstrap(conn, agent.id, username, now)
            await renewal.complete(conn, agent, now)
    if revoked:
        raise lifecycle.refuse_revoked_clone(request.app)
    expires_at = now + dt.timedelta(seconds=settings.access_key_lifetime_s)
    log.info("agent_bootstrapped", broker_user=username, expires_at=expires_at.isoformat())
    return json_response(
        BootstrapAnswer(
            amqp_url=settings.agent_amqp_url,
            vhost=tenant_vhost(agent.tenant_id),
            username=username,
            access_key=access_key,
            queue=tenant_queue(agent.tenant_id),
            reply_exchange=REPLY_EXCHANGE,
            publisher=settings.sts_broker_user,
            expires_at=expires_at,
            agent_id=agent.id,
            tenant_id=agent.tenant_id,
            heartbeat_interval_s=settings.heartbeat_interval_s,
        )
    )


async def heartbeat(request: web.Request) -> web.Response:
    """Record that the agent is alive; tell it whether to renew its certificate."""
    settings = request.app[SETTINGS]
    now = request.app[CLOCK]()
    identity = certificate_identity(request, request.app[AUTHORITY], now)
    body = decode(await request.read(), HeartbeatRequest)
    async with request.app[POOL].acquire() as conn, conn.transaction():
        agent = await verified_agent(conn, identity, lock=body.instance_id is not None)
        revoked = await lifecycle.note_instance(
            conn,
            request.app[BROKER],
            agent,
            body.instance_id,
            now=now,
            window_s=lifecycle.clone_window_s(request.app),
        )
        if not revoked:
            await queries.record_heartbeat(
                conn,
                agent.id,
                version=body.version,
                reported_status=body.status,
                detail=body.detail,
                now=now,
            )
    if revoked:
        raise lifecycle.refuse_revoked_clone(request.app)
    renew = renewal.should_renew(
        agent.cert_not_after, now=now, renew_before_days=settings.renew_before_days
    )
    log.debug("agent_heartbeat", reported_status=body.status, renew=renew)
    return json_response(
        HeartbeatAnswer(renew=renew, heartbeat_interval_s=settings.heartbeat_interval_s)
    )


async def agent_self(request: web.Request) -> web.Response:
    """The calling agent as the cloud sees it."""
    settings = request.app[SETTINGS]
    now = request.app[CLOCK]()
    identity = certificate_identity(request, request.app[AUTHORITY], now)
    async with request.app[POOL].acquire() as conn:
        agent = await verified_agent(conn, identity)
        renewing = agent.id in await queries.unconfirmed_renewals(conn, agent.tenant_id)
    return json_response(
        agent_view(
            agent,
            now=now,
            heartbeat_interval_s=settings.heartbeat_interval_s,
            renew_before_days=settings.renew_before_days,
            renewing=renewing,
        )
    )


async def list_agents(request: web.Request) -> web.Response:
    """Every agent of the admin's tenant, and only of that tenant."""
    settings = request.app[SETTINGS]
    admin = await request.app[VERIFIER].verify(request.headers.get("Authorization"))
    structlog.contextvars.bind_contextvars(tenant_id=admin.tenant_id)
    now = request.app[CLOCK]()
    async with request.app[POOL].acquire() as conn:
        agents = await queries.list_agents(conn, admin.tenant_id)
        renewing = await queries.unconfirmed_renewals(conn, admin.tenant_id)
    views = [
        agent_view(
            agent,
            now=now,
            heartbeat_interval_s=settings.heartbeat_interval_s,
            renew_before_days=settings.renew_before_days,
            renewing=agent.id in renewing,
        )
        for agent in agents
    ]
    return json_response(AgentList(agents=views))
