"""Heartbeats: tell the CA every interval that this agent is alive (docs/design.md §3.4).

The first heartbeat goes at once, so the cloud shows the agent active as soon as it
starts; then one per interval. The interval is the operator's setting
(``PTA_AGENT_HEARTBEAT_INTERVAL_S``) when given, else the CA's (bootstrap answer, then
each heartbeat answer). A heartbeat answer with ``renew: true`` is logged as
``renewal_due`` and passed to ``on_renew_due`` (the daemon then renews, ``agent.renewal``).

A failed heartbeat is logged and the loop goes on (a CA outage must not stop sign-ins);
only an answer saying the cloud no longer accepts this agent (revoked, superseded,
unknown, certificate refused or expired) ends the loop, with that error, because the
agent is then useless.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

import structlog

from agent.cloud import AgentGone, CaClient, ClientCertificateRequired, is_transient
from agent.errors import AgentError
from agent.https import ClientCertificateRefused

log = structlog.get_logger(__name__)


class HeartbeatStatus(StrEnum):
    """What the agent reports; ``detail`` says why when not healthy."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"


@dataclass(frozen=True, slots=True)
class Health:
    status: HeartbeatStatus
    detail: str = ""


async def heartbeat_loop(
    ca: CaClient,
    *,
    health: Callable[[], Health],
    interval_s: float,
    fixed_interval_s: float | None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    on_renew_due: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Send heartbeats until cancelled.

    ``interval_s`` is the CA's interval from bootstrap; ``fixed_interval_s`` the
    operator's, which wins. Raises AgentGone, ClientCertificateRefused or
    ClientCertificateRequired when the cloud no longer accepts this agent.
    """
    interval = fixed_interval_s or interval_s
    while True:
        current = health()
        try:
            answer = await ca.heartbeat(current.status, current.detail)
        except (AgentGone, ClientCertificateRefused, ClientCertificateRequired):
            raise
        except AgentError as exc:
            level = log.warning if is_transient(exc) else log.error
            level("heartbeat_failed", error=str(exc), retry_in_s=interval)
        else:
            log.debug("heartbeat_sent", status=current.status, renew=answer.renew)
            if answer.renew:
                log.warning("renewal_due")
                if on_renew_due is not None:
                    await on_renew_due()
            if fixed_interval_s is None and answer.heartbeat_interval_s is not None:
                interval = answer.heartbeat_interval_s
        await sleep(interval)
