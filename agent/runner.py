"""The agent daemon: ``run(settings, stop=...)`` until ``stop`` is set (docs/design.md
§3.2 to §3.4).

Lifetime, child tasks in one ``TaskGroup`` (docs/contributing.md §6):
1. load and check the state folder (``state.load``), the directory settings
   (``settings.directory_settings()``) and the private key, once;
2. open the directory (``LdapDirectory.open``: settings checked, service account bound,
   ``base_dn`` read) before anything is consumed; an unreachable directory is retried
   with backoff, a misconfigured one or a refused service account is fatal;
3. bootstrap over mutual TLS (``POST /agents/bootstrap``) and open the broker link with
   the returned credentials (``broker.open_link``: robust connection, one channel with
   ``prefetch``, passive checks of the tenant queue and the reply exchange); transient
   failures (CA or broker unreachable, CA 5xx) are retried with capped, jittered backoff,
   so agents do not stampede a CA that comes back;
4. build one ``SignInHandler`` for the process lifetime (its replay cache must survive
   credential refreshes) and consume the tenant queue with manual ack;
5. side by side: the heartbeat loop (``heartbeat.heartbeat_loop``; ``detail`` carries the
   handler's counts since start), the credential refresh, and the user sync
   (``agent.sync``, first ``FIRST_SYNC_DELAY_S`` after start, then every
   ``sync_interval_s``; 0 turns it off). The refresh bootstraps again at
   ``REFRESH_AT_FRACTION`` (80 %) of the access key's lifetime, opens a new link,
   consumes on it with the same handler, then cancels the old consumer, lets its
   in-flight requests finish (``drain_timeout_s``) and closes the old link (make before
   break: no gap in consumption); a heartbeat answering ``renew: true`` renews the
   certificate in the heartbeat loop (``_renew_now``, ``agent.renewal``) and swaps the
   link the same way; the expiry guard stops the agent ``expiry_margin_s`` before an
   unrenewed certificate expires;
6. when ``stop`` is set the group is cancelled; then the consumer is cancelled, in-flight
   requests drain for up to ``drain_timeout_s``, the link closes, the CA session closes
   (waiting for its TLS connections to shut down, see ``_close_quietly``), and the
   directory closes last.

Fatal, so ``run`` raises them and the process exits 1: a broken state folder, bad
directory settings (``SettingsInvalid``, ``DirectoryMisconfigured``,
``ServiceAccountRefused``), the cloud no longer accepting the agent (revoked, superseded,
unknown, client certificate refused), an untrusted server, a bootstrap answer for another
agent or tenant, a plain ``amqp://`` broker URL to a host that is not a loopback address
without ``PTA_AGENT_ALLOW_PLAINTEXT_AMQP`` (``broker.PlaintextBrokerRefused``). Everything
else is logged and retried; a failed sync only waits for the next one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final

import structlog
from aio_pika.abc import AbstractIncomingMessage

from agent import renewal, service_crl, state
from agent.broker import (
    BrokerCredentialsRefused,
    BrokerLink,
    BrokerUnreachable,
    QueueUnavailable,
    open_link,
)
from agent.cloud import (
    AgentGone,
    BrokerGrant,
    CaClient,
    ClientCertificateRequired,
    RenewalInProgress,
    RenewalNotDue,
    RenewalReplayed,
    is_transient,
    registered_ca_options,
)
from agent.consumer import SignInHandler
from agent.directory import Directory, DirectoryError, DirectoryMisconfigured
from agent.errors import AgentError
from agent.heartbeat import Health, HeartbeatStatus, heartbeat_loop
from agent.https import ClientCertificateRefused
from agent.ldap_directory import LdapDirectory, LdapDirectorySettings, ServiceAccountRefused
from agent.settings import Settings
from agent.sync import UserSource, sync_once
from common.backoff import backoff_delay
from common.contracts import tenant_queue
from common.wire import MAX_DETAIL_CHARS

log = structlog.get_logger(__name__)

REFRESH_AT_FRACTION = 0.8
MIN_REFRESH_DELAY_S = 5.0  # an almost expired grant must not make the agent spin on the CA
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0
FIRST_SYNC_DELAY_S = 10.0  # soon after start, once the broker link is up
SYNC_RETRY_MAX_S = 300.0  # after a failed sync, try again sooner than the full interval
# Heartbeat details are capped by the CA (256 characters).
_DETAIL_CHARS: Final = min(MAX_DETAIL_CHARS, 256)

_RETRYABLE = (BrokerUnreachable, BrokerCredentialsRefused, QueueUnavailable)
_FATAL_CLOUD = (AgentGone, ClientCertificateRefused, ClientCertificateRequired)
_jitter = secrets.SystemRandom()


class GrantMismatch(AgentError):
    """The CA's bootstrap answer is for another agent, tenant or queue: tell the operator
    of the cloud service; the agent does not connect with it."""


class _StopRequested(Exception):
    """Raised inside the task group to cancel it when ``stop`` is set."""


async def open_directory(settings: LdapDirectorySettings) -> Directory:
    """The directory the handler validates against (a seam for tests)."""
    return await LdapDirectory.open(settings)


class _Consumer:
    """The handler consuming one link's queue, counting its in-flight messages."""

    def __init__(self, link: BrokerLink, handler: SignInHandler) -> None:
        self.link = link
        self.handler = handler
        self.tag: str | None = None
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()

    async def __call__(self, message: AbstractIncomingMessage) -> None:
        self.in_flight += 1
        self.idle.clear()
        try:
            await self.handler(message)
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self.idle.set()

    async def start(self) -> None:
        """Consume with manual ack: the handler acks after replying (at most once)."""
        self.tag = await self.link.queue.consume(self, no_ack=False)
        log.info("consuming", queue=self.link.grant.queue)

    async def stop(self, drain_timeout_s: float) -> None:
        """Cancel the consumer, then wait up to ``drain_timeout_s`` for in-flight requests;
        what is still running then is dropped with the link (docs/design.md §3.3: the STS
        answers the user at the deadline)."""
        if self.tag is not None:
            tag, self.tag = self.tag, None
            try:
                async with asyncio.timeout(drain_timeout_s):
                    await self.link.queue.cancel(tag)
            except Exception as exc:  # channel closed or broker gone: nothing to cancel
                log.info("consumer_cancel_failed", error=type(exc).__name__)
        try:
            async with asyncio.timeout(drain_timeout_s):
                await self.idle.wait()
        except TimeoutError:
            log.warning("drain_timed_out", in_flight=self.in_flight, timeout_s=drain_timeout_s)


@dataclass(slots=True)
class _Current:
    """The link and consumer in use (replaced at each credential refresh), the one
    handler, and the last sync's outcome for the heartbeat."""

    link: BrokerLink | None = None
    consumer: _Consumer | None = None
    handler: SignInHandler | None = None
    received_at: float = field(default_factory=time.time)
    last_sync: str = ""
    # Links being retired by a refresh; closed by _halt if a stop interrupts the refresh.
    retiring: list[tuple[_Consumer | None, BrokerLink]] = field(default_factory=list)
    # The identity in use (replaced by a renewal); one link swap at a time.
    registration: state.Registration | None = None
    swap_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    generation: int = 0  # bumped by each renewal: calls made before it may be refused
    renew_not_before: float = 0.0  # after renewal_in_progress: the CA's retry_after_s

    def health(self) -> Health:
        detail = self.detail()
        if self.link is not None and self.link.is_connected:
            return Health(HeartbeatStatus.HEALTHY, detail)
        lost = "broker connection lost, reconnecting"
        return Health(HeartbeatStatus.DEGRADED, f"{lost}; {detail}"[:_DETAIL_CHARS])

    def detail(self) -> str:
        """``"replies success=12 invalid_credentials=3; in_flight=1; sync ok 1006 users"``."""
        parts = []
        if self.handler is not None:
            counts = " ".join(f"{k}={v}" for k, v in sorted(self.handler.counts.items()))
            parts.append(f"replies {counts}" if counts else "replies none")
        if self.consumer is not None and self.consumer.in_flight:
            parts.append(f"in_flight={self.consumer.in_flight}")
        if self.last_sync:
            parts.append(f"sync {self.last_sync}")
        return "; ".join(parts)[:_DETAIL_CHARS]


async def run(settings: Settings, *, stop: asyncio.Event) -> None:
    """Run the agent until ``stop`` is set.

    Raises StateError (CertificateExpired among them), SettingsInvalid,
    DirectoryMisconfigured, ServiceAccountRefused, AgentGone, ClientCertificateRefused,
    ServerNotTrusted, GrantMismatch, and other non-transient AgentErrors (see the module
    docstring).
    """
    registration = state.load(settings.state_dir)
    registration.ensure_valid(dt.datetime.now(dt.UTC))
    directory_settings = settings.directory_settings()
    record = registration.record
    with structlog.contextvars.bound_contextvars(
        agent_id=record.agent_id, tenant_id=record.tenant_id
    ):
        log.info("agent_starting", ca_url=record.ca_url, kid=registration.kid)
        directory = await _open_directory(directory_settings, stop)
        if directory is None:  # stopped while waiting for the directory
            log.info("agent_stopped")
            return
        try:
            await _run_connected(settings, registration, directory, directory_settings, stop)
        finally:
            await directory.aclose()  # last: in-flight requests may still have used it
        log.info("agent_stopped")


async def _run_connected(
    settings: Settings,
    registration: state.Registration,
    directory: Directory,
    directory_settings: LdapDirectorySettings,
    stop: asyncio.Event,
) -> None:
    record = registration.record
    current = _Current()
    # Before the first mutual-TLS call: a revoked CA or broker certificate is refused.
    await service_crl.refresh(registration, timeout_s=settings.http_timeout_s)
    ca = CaClient(**registered_ca_options(registration, timeout_s=settings.http_timeout_s))
    if state.pending_renewal_key(registration.dir) is not None:
        registration = await _resume_renewal(ca, registration)
    current.registration = registration
    handler = SignInHandler(
        agent_id=record.agent_id,
        tenant_id=record.tenant_id,
        kid=registration.kid,
        private_key=registration.private_key(),
        directory=directory,
        exchange=_NotConnected(),
        publisher="",  # no request is handled before a grant names the STS's broker user
    )
    current.handler = handler
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(_raise_when_set(stop), name="stop")
            group.create_task(_serve(ca, settings, current), name="serve")
            group.create_task(_crl_loop(ca, settings, current), name="service_crl")
            if settings.sync_interval_s > 0:
                source = UserSource(directory_settings)
                group.create_task(
                    _sync_loop(ca, source, settings.sync_interval_s, current), name="sync"
                )
    except BaseExceptionGroup as errors:
        _reraise(errors)
    finally:
        await _halt(current, settings)
        await _close_quietly(ca.close, settings.drain_timeout_s, "ca_session")


async def _open_directory(settings: LdapDirectorySettings, stop: asyncio.Event) -> Directory | None:
    """Open the directory, retrying while it is unreachable; None when ``stop`` is set
    first. A misconfiguration or a refused service account is raised: only the operator
    can fix it."""
    attempt = 0
    while True:
        try:
            return await open_directory(settings)
        except (DirectoryMisconfigured, ServiceAccountRefused):
            raise
        except DirectoryError as exc:
            delay = retry_delay(attempt)
            attempt += 1
            log.warning("directory_open_failed", error=str(exc), attempt=attempt, retry_in_s=delay)
            try:
                async with asyncio.timeout(delay):
                    await stop.wait()
                return None
            except TimeoutError:
                continue


def refresh_delay(*, received_at: float, expires_at: float, now: float) -> float:
    """Seconds until the next bootstrap: at ``REFRESH_AT_FRACTION`` of the grant's
    lifetime (from when it was received), never less than ``MIN_REFRESH_DELAY_S``."""
    due = received_at + REFRESH_AT_FRACTION * (expires_at - received_at)
    return max(MIN_REFRESH_DELAY_S, due - now)


def retry_delay(attempt: int) -> float:
    """Backoff after failed attempt ``attempt`` (0-based): doubling from 1 s up to 60 s,
    with jitter of up to half, so many agents do not retry in step."""
    return backoff_delay(attempt, first_s=RETRY_FIRST_S, max_s=RETRY_MAX_S)


async def _serve(ca: CaClient, settings: Settings, current: _Current) -> None:
    assert current.handler is not None and current.registration is not None
    registration = current.registration
    current.received_at = time.time()
    link = await _connect(ca, registration, settings)
    current.link = link
    current.handler.exchange = link.exchange
    current.handler.publisher = link.grant.publisher
    consumer = _Consumer(link, current.handler)
    current.consumer = consumer
    await consumer.start()
    async with asyncio.TaskGroup() as group:
        group.create_task(
            heartbeat_loop(
                ca,
                health=current.health,
                interval_s=link.grant.heartbeat_interval_s,
                fixed_interval_s=settings.heartbeat_interval_s,
                on_renew_due=lambda: _renew_now(ca, settings, current),
            ),
            name="heartbeat",
        )
        group.create_task(_refresh(ca, settings, current), name="refresh")
        group.create_task(_expiry_guard(settings, current), name="expiry")


async def _crl_loop(ca: CaClient, settings: Settings, current: _Current) -> None:
    """Refresh the service CRL every ``service_crl.REFRESH_S``; the CA client's next
    connections check against a newer one (the broker's at its next link)."""
    while True:
        await asyncio.sleep(service_crl.REFRESH_S * _jitter.uniform(0.9, 1.1))
        assert current.registration is not None
        if await service_crl.refresh(current.registration, timeout_s=settings.http_timeout_s):
            async with current.swap_lock:
                assert current.registration is not None
                await ca.use_identity(current.registration.mutual_tls())


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
                allow_plaintext=settings.allow_plaintext_amqp,
            )
        except AgentError as exc:
            if not (is_transient(exc) or isinstance(exc, _RETRYABLE)):
                raise
            delay = retry_delay(attempt)
            attempt += 1
            log.warning("connect_failed", error=str(exc), attempt=attempt, retry_in_s=delay)
            await asyncio.sleep(delay)


async def _refresh(ca: CaClient, settings: Settings, current: _Current) -> None:
    """Bootstrap again before the access key expires and move the consumer to a new link."""
    while True:
        assert current.link is not None and current.handler is not None  # set by _serve
        delay = refresh_delay(
            received_at=current.received_at,
            expires_at=current.link.grant.expires_at.timestamp(),
            now=time.time(),
        )
        await asyncio.sleep(delay)
        await _swap_link(ca, settings, current, why="broker_credentials_rotated")


async def _swap_link(ca: CaClient, settings: Settings, current: _Current, *, why: str) -> None:
    async with current.swap_lock:
        await _swap_link_locked(ca, settings, current, why=why)


async def _swap_link_locked(
    ca: CaClient, settings: Settings, current: _Current, *, why: str
) -> None:
    """Bootstrap with the current identity, consume on the new link, then retire the old
    one (make before break: no gap in consumption). The caller holds ``swap_lock``."""
    assert current.link is not None and current.handler is not None
    assert current.registration is not None
    received_at = time.time()
    new = await _connect(ca, current.registration, settings)
    consumer = _Consumer(new, current.handler)
    try:
        await consumer.start()
    except BaseException:
        await new.close(settings.drain_timeout_s)  # bounded, never raises
        raise
    old_link, old_consumer = current.link, current.consumer
    current.link, current.consumer, current.received_at = new, consumer, received_at
    current.handler.exchange = new.exchange  # in-flight requests reply on the new channel
    current.handler.publisher = new.grant.publisher
    log.info(
        why,
        expires_at=new.grant.expires_at.isoformat(),
        previous_expired_at=old_link.grant.expires_at.isoformat(),
    )
    retired = (old_consumer, old_link)
    current.retiring.append(retired)
    if old_consumer is not None:
        await old_consumer.stop(settings.drain_timeout_s)
    await old_link.close(settings.drain_timeout_s)
    current.retiring.remove(retired)


async def _renew_now(ca: CaClient, settings: Settings, current: _Current) -> None:
    """Renew the certificate (a heartbeat said so; ``agent.renewal``) without dropping a
    sign-in: the old key stays for requests sealed before the STS switched, the CA sees
    the new certificate from now on, and the broker link is replaced make before break
    with credentials bootstrapped with the new certificate.

    Runs inside the heartbeat loop, holding ``swap_lock``: no heartbeat or bootstrap
    with the old certificate is in flight when the CA supersedes it. A failure is logged
    and tried again at a later heartbeat (after ``retry_after_s`` when the CA says
    another agent of the tenant is renewing).
    """
    if time.monotonic() < current.renew_not_before:
        return
    async with current.swap_lock:
        assert current.registration is not None and current.handler is not None
        old = current.registration
        try:
            renewed, key = await renewal.renew(
                ca, old, now=dt.datetime.now(dt.UTC), on_new_key=current.handler.accept_key
            )
        except RenewalInProgress as exc:
            delay = exc.retry_after_s * _jitter.uniform(1.0, 1.5)
            current.renew_not_before = time.monotonic() + delay
            log.info("renewal_postponed", reason="renewal_in_progress", retry_in_s=delay)
            return
        except _FATAL_CLOUD:
            raise
        except AgentError as exc:
            log.warning("renewal_failed", error=str(exc), kind=type(exc).__name__)
            return
        started = time.perf_counter()
        current.handler.use_key(renewed.kid, key)
        current.registration = renewed
        current.generation += 1
        await ca.use_identity(renewed.mutual_tls())
        await _swap_link_locked(ca, settings, current, why="broker_link_renewed")
    asyncio.get_running_loop().call_later(
        renewal.KEEP_OLD_KEY_S, current.handler.forget_key, old.kid
    )
    log.info(
        "renewal_done",
        kid=renewed.kid,
        switch_ms=round((time.perf_counter() - started) * 1000, 1),
        old_key_kept_s=renewal.KEEP_OLD_KEY_S,
    )


async def _resume_renewal(ca: CaClient, registration: state.Registration) -> state.Registration:
    """Finish a renewal a crash interrupted (``renew.key`` without certificate) before
    anything else: if the CA already switched this agent, only this gets the new
    certificate. The CA answering ``renewal_in_progress`` or ``renewal_not_due`` proves it
    did not: the current identity is still good and the renewal waits for the next
    heartbeat that asks for it."""
    attempt = 0
    while True:
        try:
            renewed, _ = await renewal.renew(ca, registration, now=dt.datetime.now(dt.UTC))
        except (RenewalInProgress, RenewalReplayed, RenewalNotDue):
            return registration
        except AgentError as exc:
            if not is_transient(exc):
                raise
            delay = retry_delay(attempt)
            attempt += 1
            log.warning("renewal_resume_failed", error=str(exc), retry_in_s=delay)
            await asyncio.sleep(delay)
            continue
        await ca.use_identity(renewed.mutual_tls())
        return renewed


async def _expiry_guard(settings: Settings, current: _Current) -> None:
    """Stop consuming ``expiry_margin_s`` before the certificate expires (if it was not
    renewed by then), so no request is sent to a key the CA no longer trusts: raises
    CertificateExpired, which stops the daemon."""
    while True:
        assert current.registration is not None
        not_after = current.registration.not_after
        delay = renewal.expiry_stop_delay(
            not_after, now=dt.datetime.now(dt.UTC), margin_s=settings.expiry_margin_s
        )
        if delay <= 0:
            log.error("certificate_expiring_stop", not_after=not_after.isoformat())
            raise state.CertificateExpired(
                f"It expires at {not_after.isoformat()} and was not renewed; the agent "
                "stopped consuming before that."
            )
        await asyncio.sleep(min(delay, 60.0))  # a renewal moves the deadline


async def _sync_loop(
    ca: CaClient, source: UserSource, interval_s: float, current: _Current
) -> None:
    """Sync the directory's users to the cloud, soon after start and then periodically.

    A failed sync is logged and tried again after at most ``SYNC_RETRY_MAX_S``; only the
    cloud refusing this agent ends the loop (with that error, as the heartbeat does).
    """
    delay = min(interval_s, FIRST_SYNC_DELAY_S) * _jitter.uniform(0.5, 1.0)
    while True:
        await asyncio.sleep(delay)
        generation = current.generation
        try:
            report = await sync_once(source, ca)
        except _FATAL_CLOUD as exc:
            if current.generation == generation:
                raise
            # Sent with the certificate a renewal has just replaced: try again soon.
            log.info("users_sync_interrupted_by_renewal", error=str(exc))
            delay = FIRST_SYNC_DELAY_S
            continue
        except AgentError as exc:
            log.warning("users_sync_failed", error=str(exc), kind=type(exc).__name__)
            current.last_sync = f"failed at {_clock()}: {type(exc).__name__}"
            delay = min(interval_s, SYNC_RETRY_MAX_S)
            continue
        current.last_sync = f"ok at {_clock()}: {len(report.source.users)} users"
        delay = interval_s


async def _halt(current: _Current, settings: Settings) -> None:
    """Stop consuming, drain in-flight requests, close the links (docs/contributing.md §6)."""
    pairs = [(current.consumer, current.link), *current.retiring]
    current.retiring.clear()
    for consumer, _ in pairs:
        if consumer is not None:
            await consumer.stop(settings.drain_timeout_s)
    for _, link in pairs:
        if link is not None:
            await link.close(settings.drain_timeout_s)


async def _close_quietly(
    close: Callable[[], Coroutine[Any, Any, None]], timeout_s: float | None, what: str
) -> None:
    """Await ``close`` (bounded), logging instead of raising: shutdown goes on.

    For the CA session this is what keeps a clean stop free of "Fatal error on SSL
    protocol" tracebacks: aiohttp's ``close`` waits until each TLS connection has shut
    down, so no transport outlives the event loop (uvloop reports a TLS close_notify
    written after the loop closed its transport as a fatal error).
    """
    try:
        async with asyncio.timeout(timeout_s):
            await close()
    except TimeoutError:
        log.warning("close_timed_out", what=what, timeout_s=timeout_s)
    except (AgentError, OSError) as exc:
        log.info("close_failed", what=what, error=type(exc).__name__)


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


class _NotConnected:
    """The handler's exchange until the first link is up (no message arrives before)."""

    async def publish(self, message: object, routing_key: str) -> object:
        raise BrokerUnreachable("(no broker link yet)")


def _clock() -> str:
    return dt.datetime.now(dt.UTC).strftime("%H:%MZ")


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
