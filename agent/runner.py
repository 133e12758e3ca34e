"""The agent daemon: ``run(settings, stop=...)`` until ``stop`` is set (DESIGN.md flows 2, 4).

Lifetime, all child tasks in one ``TaskGroup`` (STYLE.md section 6):
1. load and check the state folder (``state.load``);
2. bootstrap over mutual TLS (``POST /agents/bootstrap``) and open the broker link with
   the returned credentials (``broker.open_link``: robust connection, one channel,
   passive check of the tenant queue); transient failures (CA or broker unreachable, CA
   5xx) are retried with capped, jittered backoff, so agents do not stampede a CA that
   comes back;
3. then, side by side: the heartbeat loop (``heartbeat.heartbeat_loop``) and the
   credential refresh, which bootstraps again at ``REFRESH_AT_FRACTION`` (80 %) of the
   access key's lifetime, opens a new link with the new key, swaps it in and closes the
   old one (make before break, so a consumer can move without a gap);
4. when ``stop`` is set the group is cancelled and the link is closed within
   ``drain_timeout_s``.

Fatal, so ``run`` raises them and the process exits 1: a broken state folder, the cloud
no longer accepting the agent (revoked, superseded, unknown, client certificate refused),
an untrusted server, a bootstrap answer for another agent or tenant. Everything else is
logged and retried.

Sign-in requests are not consumed yet: the consumer arrives with the sign-in issue, as a
``broker.MessageHandler`` that ``_serve`` starts on ``link.queue`` (and moves to the new
link at each refresh). Until then the agent is connected and reports heartbeats only.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import time
from dataclasses import dataclass, field

import structlog

from agent import state
from agent.broker import (
    BrokerCredentialsRefused,
    BrokerLink,
    BrokerUnreachable,
    QueueUnavailable,
    open_link,
)
from agent.cloud import BrokerGrant, CaClient, is_transient
from agent.errors import AgentError
from agent.heartbeat import Health, HeartbeatStatus, heartbeat_loop
from agent.settings import Settings
from common.contracts import tenant_queue

log = structlog.get_logger(__name__)

REFRESH_AT_FRACTION = 0.8
MIN_REFRESH_DELAY_S = 5.0  # an almost expired grant must not make the agent spin on the CA
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0

_RETRYABLE = (BrokerUnreachable, BrokerCredentialsRefused, QueueUnavailable)
_jitter = secrets.SystemRandom()


class GrantMismatch(AgentError):
    """The CA's bootstrap answer is for another agent, tenant or queue: tell the operator
    of the cloud service; the agent does not connect with it."""


class _StopRequested(Exception):
    """Raised inside the task group to cancel it when ``stop`` is set."""


@dataclass(slots=True)
class _Current:
    """The link in use; replaced at each credential refresh."""

    link: BrokerLink | None = None
    received_at: float = field(default_factory=time.time)

    def health(self) -> Health:
        if self.link is not None and self.link.is_connected:
            return Health(HeartbeatStatus.HEALTHY)
        return Health(HeartbeatStatus.DEGRADED, "broker connection lost, reconnecting")


async def run(settings: Settings, *, stop: asyncio.Event) -> None:
    """Run the agent until ``stop`` is set.

    Raises StateError (CertificateExpired among them), AgentGone,
    ClientCertificateRefused, ServerNotTrusted, GrantMismatch, and other non-transient
    AgentErrors (see the module docstring).
    """
    registration = state.load(settings.state_dir)
    registration.ensure_valid(dt.datetime.now(dt.UTC))
    record = registration.record
    trust = f"the CA bundle this agent was registered with ({registration.dir.ca_bundle})"
    current = _Current()
    with structlog.contextvars.bound_contextvars(
        agent_id=record.agent_id, tenant_id=record.tenant_id
    ):
        log.info("agent_starting", ca_url=record.ca_url, kid=registration.kid)
        async with CaClient(
            record.ca_url,
            ssl_context=registration.mutual_tls(),
            trust=trust,
            timeout_s=settings.http_timeout_s,
        ) as ca:
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(_raise_when_set(stop), name="stop")
                    group.create_task(_serve(ca, registration, settings, current), name="serve")
            except BaseExceptionGroup as errors:
                _reraise(errors)
            finally:
                if current.link is not None:
                    await current.link.close(settings.drain_timeout_s)
        log.info("agent_stopped")


def refresh_delay(*, received_at: float, expires_at: float, now: float) -> float:
    """Seconds until the next bootstrap: at ``REFRESH_AT_FRACTION`` of the grant's
    lifetime (from when it was received), never less than ``MIN_REFRESH_DELAY_S``."""
    due = received_at + REFRESH_AT_FRACTION * (expires_at - received_at)
    return max(MIN_REFRESH_DELAY_S, due - now)


def retry_delay(attempt: int) -> float:
    """Backoff after failed attempt ``attempt`` (0-based): doubling from 1 s up to 60 s,
    with jitter of up to half, so many agents do not retry in step."""
    ceiling = min(RETRY_MAX_S, RETRY_FIRST_S * 2.0**attempt)
    return ceiling * _jitter.uniform(0.5, 1.0)


async def _serve(
    ca: CaClient, registration: state.Registration, settings: Settings, current: _Current
) -> None:
    current.received_at = time.time()
    current.link = await _connect(ca, registration, settings)
    async with asyncio.TaskGroup() as group:
        group.create_task(
            heartbeat_loop(
                ca,
                health=current.health,
                interval_s=current.link.grant.heartbeat_interval_s,
                fixed_interval_s=settings.heartbeat_interval_s,
            ),
            name="heartbeat",
        )
        group.create_task(_refresh(ca, registration, settings, current), name="refresh")


async def _connect(
    ca: CaClient, registration: state.Registration, settings: Settings
) -> BrokerLink:
    """Bootstrap and open a link, retrying transient failures until it works."""
    attempt = 0
    while True:
        try:
            grant = await ca.bootstrap()
            _check_grant(grant, registration)
            log.info(
                "agent_bootstrapped",
                queue=grant.queue,
                expires_at=grant.expires_at.isoformat(),
                heartbeat_interval_s=grant.heartbeat_interval_s,
            )
            return await open_link(
                grant,
                ssl_context=registration.server_tls(),
                prefetch=settings.prefetch,
                timeout_s=settings.http_timeout_s,
                name=f"pta-agent {registration.record.agent_id}",
            )
        except AgentError as exc:
            if not (is_transient(exc) or isinstance(exc, _RETRYABLE)):
                raise
            delay = retry_delay(attempt)
            attempt += 1
            log.warning("connect_failed", error=str(exc), attempt=attempt, retry_in_s=delay)
            await asyncio.sleep(delay)


async def _refresh(
    ca: CaClient, registration: state.Registration, settings: Settings, current: _Current
) -> None:
    """Bootstrap again before the access key expires and move to a new link."""
    while True:
        assert current.link is not None  # set by _serve before this task starts
        delay = refresh_delay(
            received_at=current.received_at,
            expires_at=current.link.grant.expires_at.timestamp(),
            now=time.time(),
        )
        await asyncio.sleep(delay)
        received_at = time.time()
        new = await _connect(ca, registration, settings)
        old, current.link, current.received_at = current.link, new, received_at
        log.info(
            "broker_credentials_rotated",
            expires_at=new.grant.expires_at.isoformat(),
            previous_expired_at=old.grant.expires_at.isoformat(),
        )
        await old.close(settings.drain_timeout_s)


def _check_grant(grant: BrokerGrant, registration: state.Registration) -> None:
    record = registration.record
    expected = (record.agent_id, record.tenant_id, tenant_queue(record.tenant_id))
    if (grant.agent_id, grant.tenant_id, grant.queue) != expected:
        raise GrantMismatch(
            f"Expected agent {expected[0]}, tenant {expected[1]}, queue {expected[2]}; got "
            f"agent {grant.agent_id}, tenant {grant.tenant_id}, queue {grant.queue}."
        )
    if grant.expires_at <= dt.datetime.now(dt.UTC):
        raise GrantMismatch(
            f"The credentials expired at {grant.expires_at.isoformat()} already; if that "
            "is not so, this host's clock is wrong: fix it (NTP)."
        )


async def _raise_when_set(stop: asyncio.Event) -> None:
    await stop.wait()
    log.info("agent_stopping")
    raise _StopRequested


def _reraise(errors: BaseExceptionGroup[BaseException]) -> None:
    """Return on a requested stop; otherwise raise the first real error by itself (so the
    CLI can show its message), or the group when none is an AgentError."""
    real = [
        exc
        for exc in _leaves(errors)
        if not isinstance(exc, _StopRequested | asyncio.CancelledError)
    ]
    if not real:
        return
    for exc in real:
        if isinstance(exc, AgentError):
            raise exc
    raise errors


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found.extend(_leaves(exc))
        else:
            found.append(exc)
    return found
