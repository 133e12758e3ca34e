"""Agent lifecycle beyond renewal (docs/architecture.md "Agent lifecycle"): state, the
lifecycle sweep that deletes expired and long-inactive agents, and clone detection.

State (``GET /agents`` ``state``): ``suspected_clone`` once the CA saw the agent's
identity used by two live processes, else ``active`` when it reported within two
heartbeat intervals, else ``inactive``.

Lifecycle sweep (``sweep``, run every ``expiry_sweep_interval_s`` by ``sweeper``): agents
whose certificate expired (``ca.renewal.sweep_expired``), then agents silent for
``inactive_delete_days`` (last heartbeat, else last bootstrap, else registration), each
deleted as an admin's delete does (serial on the CRL with reason ``agent_inactive``,
broker user deleted, row deleted).

Clone detection: every agent process draws a random instance id at start and sends it
with each bootstrap and heartbeat (renewal's re-bootstrap is the same process, so the
same id). The CA keeps the instances seen within ``clone_window_s`` (default two
heartbeat intervals) per agent. A NEW id is fine (a restart: the old process went
silent). An id seen BEFORE another id that is still live is two processes taking turns
with one identity: the agent is marked ``suspected_clone`` (kept until it is deleted),
``agent_suspected_clone`` is logged as one warning line with both instance ids, and when
the tenant's ``revoke_suspected_clones`` is on the agent is deleted at once (reason
``suspected_clone``) and the call refused as ``certificate_revoked``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import structlog
from aiohttp import web

from ca import queries
from ca.broker_admin import BrokerAdmin
from ca.errors import CertificateRevoked
from ca.mtls import PTA_ISSUER
from ca.queries import AgentRecord
from ca.renewal import sweep_agents, sweep_expired
from ca.resources import CLOCK, SETTINGS
from ca.revocation import CRLS, retire_agent

log = structlog.get_logger("ca.lifecycle")

ACTIVE, INACTIVE, SUSPECTED_CLONE = "active", "inactive", "suspected_clone"
INACTIVE_REASON = "agent_inactive"
"""``revocations.reason`` of an agent deleted by the inactive sweep."""
CLONE_REASON = "suspected_clone"
"""``revocations.reason`` of an agent revoked by the tenant's clone policy."""
MAX_INSTANCES = 8


def agent_state(agent: AgentRecord, *, now: dt.datetime, heartbeat_interval_s: int) -> str:
    """``suspected_clone``, else ``active`` within two heartbeat intervals, else ``inactive``."""
    if agent.suspected_clone_at is not None:
        return SUSPECTED_CLONE
    if agent.last_heartbeat_at is None:
        return INACTIVE
    silent = now - agent.last_heartbeat_at
    return ACTIVE if silent <= dt.timedelta(seconds=2 * heartbeat_interval_s) else INACTIVE


# -- clone detection ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sighting:
    """The instances to store, and the other live instance when ``instance_id`` is a clone."""

    instances: dict[str, dt.datetime]
    clone_of: str | None


def sight(
    instances: dict[str, dt.datetime], instance_id: str, *, now: dt.datetime, window_s: float
) -> Sighting:
    """Record ``instance_id`` at ``now`` (pure; module docstring).

    Clone: ``instance_id`` was seen before, and since then another instance was seen
    within the window. A new id, or the most recent one again, is not.
    """
    window = dt.timedelta(seconds=window_s)
    live = {i: at for i, at in instances.items() if now - at <= window}
    clone_of = None
    mine = live.get(instance_id)
    if mine is not None:
        later = [(at, i) for i, at in live.items() if i != instance_id and at >= mine]
        if later:
            clone_of = max(later)[1]
    live[instance_id] = now
    newest = sorted(live.items(), key=lambda item: item[1], reverse=True)[:MAX_INSTANCES]
    return Sighting(dict(newest), clone_of)


def _decode_instances(text: str) -> dict[str, dt.datetime]:
    try:
        raw = json.loads(text)
        return {str(k): dt.datetime.fromisoformat(v) for k, v in raw.items()}
    except (ValueError, TypeError, AttributeError):
        return {}


def _encode_instances(instances: dict[str, dt.datetime]) -> str:
    return json.dumps({k: v.isoformat() for k, v in instances.items()})


async def note_instance(
    conn: asyncpg.Connection,
    broker: BrokerAdmin,
    agent: AgentRecord,
    instance_id: str | None,
    *,
    now: dt.datetime,
    window_s: float,
) -> bool:
    """Record which process used ``agent`` (its row locked by the caller's transaction);
    mark, log and (by tenant policy) revoke a clone. True when the agent was revoked
    here: the caller commits, then refuses the call (``refuse_revoked_clone``)."""
    if instance_id is None:  # an agent from before instance ids: nothing to compare
        return False
    seen = _decode_instances(await queries.agent_instances(conn, agent.id))
    sighting = sight(seen, instance_id, now=now, window_s=window_s)
    clone = sighting.clone_of is not None
    await queries.record_instances(
        conn, agent.id, _encode_instances(sighting.instances), clone_at=now if clone else None
    )
    if not clone:
        return False
    revoke = await queries.revokes_suspected_clones(conn, agent.tenant_id)
    log.warning(
        "agent_suspected_clone",
        agent_id=agent.id,
        tenant_id=agent.tenant_id,
        instance_id=instance_id,
        other_instance_id=sighting.clone_of,
        instance_ids=sorted([instance_id, str(sighting.clone_of)]),
        first=agent.suspected_clone_at is None,
        revoked=revoke,
    )
    if revoke:
        await retire_agent(conn, broker, agent, reason=CLONE_REASON, now=now)
        log.warning("agent_clone_revoked", agent_id=agent.id, tenant_id=agent.tenant_id)
    return revoke


def refuse_revoked_clone(app: web.Application) -> CertificateRevoked:
    """The refusal of the call that got its agent revoked as a clone (after the commit)."""
    app[CRLS].invalidate(PTA_ISSUER)
    return CertificateRevoked(detail="suspected clone revoked by tenant policy")


def clone_window_s(app: web.Application) -> float:
    settings = app[SETTINGS]
    return settings.clone_window_s or 2.0 * settings.heartbeat_interval_s


# -- the lifecycle sweep ----------------------------------------------------------------------


async def sweep_inactive(app: web.Application, now: dt.datetime) -> list[str]:
    """Delete every agent silent for ``inactive_delete_days`` by ``now``; returns their ids."""
    silent_since = now - dt.timedelta(days=app[SETTINGS].inactive_delete_days)

    async def select(conn: asyncpg.Connection) -> list[queries.ExpiredAgent]:
        return await queries.lock_inactive_agents(conn, silent_since, 1)

    return await sweep_agents(
        app, now, select=select, reason=INACTIVE_REASON, event="agent_inactive_deleted"
    )


async def sweep(app: web.Application, now: dt.datetime) -> list[str]:
    """One lifecycle sweep: expired agents, then long-inactive ones; the deleted ids."""
    return [*await sweep_expired(app, now), *await sweep_inactive(app, now)]


async def sweeper(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: run ``sweep`` every ``expiry_sweep_interval_s`` (0: never)."""
    interval = app[SETTINGS].expiry_sweep_interval_s
    task = asyncio.create_task(_sweep_loop(app, interval)) if interval > 0 else None
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass


async def _sweep_loop(app: web.Application, interval_s: float) -> None:
    while True:
        try:
            await sweep(app, app[CLOCK]())
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("agent_lifecycle_sweep_failed")
        await asyncio.sleep(interval_s)
